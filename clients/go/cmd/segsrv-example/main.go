// Command segsrv-example runs a few calls against a segsrv server serving PetNord (or any
// snapshot with a customers universe with churned and region fields):
//
//	go run ./cmd/segsrv-example -addr 127.0.0.1:50051
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"segsrv.dev/clients/go/segsrv"
	pb "segsrv.dev/clients/go/segsrvv1"
)

func main() {
	addr := flag.String("addr", envOr("SEGSRV_ADDR", "127.0.0.1:50051"), "server address host:port")
	universe := flag.String("universe", "customers", "universe to query")
	id := flag.String("id", "CUST-00001", "customer id to predict for")
	flag.Parse()
	log.SetFlags(0)

	c, err := segsrv.Dial(*addr, segsrv.WithTimeout(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	wait, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.WaitServing(wait); err != nil {
		log.Fatalf("server at %s is not serving: %v", *addr, err)
	}

	info, err := c.SnapshotInfo(ctx, *universe, false)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("snapshot %s version %s\n", info.GetInfo().GetSnapshotName(), info.GetInfo().GetSnapshotVersion())
	for _, u := range info.GetUniverses() {
		fmt.Printf("  universe %s: %d rows, %d fields, %d features\n",
			u.GetName(), u.GetRowCount(), len(u.GetFields()), u.GetFeatureCount())
	}

	churned := segsrv.Term("churned", "true")
	n, err := c.Count(ctx, *universe, churned)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("churned = true: %d of %d\n", n.GetCount(), n.GetRowCount())

	rel, err := c.Relate(ctx, &pb.RelateRequest{
		Universe:  *universe,
		Condition: churned,
		Fields:    []string{"region"},
		Direction: pb.RelateDirection_RELATE_DIRECTION_ALL,
		OrderBy:   pb.RelateOrder_RELATE_ORDER_LIFT,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("regions of churned customers, by lift:")
	for _, h := range rel.GetHits() {
		fmt.Printf("  %-10s lift %.3f  support %4d  p %.3g\n", h.GetValue(), h.GetLift(), h.GetSupport(), h.GetPValue())
	}

	p, err := c.Predict(ctx, &pb.PredictRequest{Universe: *universe, TargetField: "churned", Id: *id})
	if err != nil {
		log.Fatal(err)
	}
	for _, v := range p.GetProbabilities() {
		e := v.GetExplanation()
		fmt.Printf("P(churned = %s | %s) = %.4f (base %.4f, %d factors)\n",
			v.GetValue(), *id, v.GetProbability(), e.GetBaseProbability(), len(e.GetFactors()))
	}

	// Errors carry the status code, the field violations and a reason.
	_, err = c.Count(ctx, *universe, segsrv.Term("regoin", "helsinki"))
	var se *segsrv.Error
	if errors.As(err, &se) {
		fmt.Printf("error: %s %s\n", se.Code, se.Reason)
		for _, v := range se.Violations {
			fmt.Printf("  %s: %s\n", v.Field, v.Description)
		}
	}
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
