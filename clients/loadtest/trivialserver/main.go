// Command trivialserver answers every unary gRPC call with an empty message, as fast as
// grpc-go can: the floor against which the load generator's own capacity is measured
// (docs/loadtest.md, "Generator capacity"). It never parses the request; an empty message
// is a valid encoding of every response type.
//
//	go run . -addr 127.0.0.1:0     # prints "listening on 127.0.0.1:PORT"
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
)

// rawCodec passes message bytes through unparsed.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { *(v.(*[]byte)) = data; return nil }
func (rawCodec) Name() string                       { return "proto" }

func handle(_ any, stream grpc.ServerStream) error {
	var in []byte
	if err := stream.RecvMsg(&in); err != nil {
		return err
	}
	out := []byte{}
	return stream.SendMsg(&out)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (loopback by default)")
	flag.Parse()
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.UnknownServiceHandler(handle))
	fmt.Printf("listening on %s\n", lis.Addr())
	os.Stdout.Sync()
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
		<-ch
		srv.Stop()
	}()
	if err := srv.Serve(lis); err != nil {
		log.Fatal(err)
	}
}
