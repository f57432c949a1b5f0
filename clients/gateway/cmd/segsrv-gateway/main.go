// Command segsrv-gateway serves segsrv's gRPC SegmentationService as HTTP/JSON, in front of a
// running `segsrv serve` (docs/gateway.md):
//
//	segsrv-gateway -listen 127.0.0.1:8080 -backend 127.0.0.1:50051
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"segsrv.dev/clients/gateway/gateway"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "HTTP listen address host:port")
	backend := flag.String("backend", "127.0.0.1:50051", "segsrv gRPC server address host:port")
	caFile := flag.String("backend-ca", "", "PEM file of the CA certificates to verify the backend's TLS certificate; empty: plaintext")
	maxResponseMB := flag.Int("max-response-mb", 64, "largest response message accepted from the backend, in MiB")
	grace := flag.Duration("grace", 5*time.Second, "on SIGTERM / SIGINT, how long requests in flight may take to finish")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: segsrv-gateway [flags]   (docs/gateway.md)\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("segsrv-gateway: ")
	if flag.NArg() > 0 {
		log.Fatalf("unexpected argument %q: every option is a flag (-h lists them)", flag.Arg(0))
	}
	if *maxResponseMB < 1 {
		log.Fatalf("-max-response-mb %d: must be at least 1", *maxResponseMB)
	}

	conn, err := gateway.Dial(*backend, gateway.Options{CAFile: *caFile, MaxResponseBytes: *maxResponseMB << 20})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	handler, err := gateway.NewHandler(ctx, conn)
	if err != nil {
		log.Fatal(err)
	}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("-listen %s: %v", *listen, err)
	}
	server := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("listening on http://%s, backend %s (%s)", listener.Addr(), *backend, transport(*caFile))

	done := make(chan error, 1)
	go func() { done <- server.Serve(listener) }()
	select {
	case err := <-done:
		log.Fatal(err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	if err := server.Shutdown(shutdown); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Print(err)
		os.Exit(1)
	}
	log.Print("stopped")
}

func transport(caFile string) string {
	if caFile == "" {
		return "plaintext"
	}
	return "TLS, CA " + caFile
}
