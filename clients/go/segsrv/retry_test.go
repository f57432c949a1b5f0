package segsrv_test

// The retry policy, against an in-process fake server whose Count fails a given number of
// times: UNAVAILABLE is sent again (up to maxAttempts), other codes are not, and
// WithRetry(false) sends once. No segsrv server is needed.

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"segsrv.dev/clients/go/segsrv"
	pb "segsrv.dev/clients/go/segsrvv1"
)

type flaky struct {
	pb.UnimplementedSegmentationServiceServer
	mu       sync.Mutex
	failures int
	code     codes.Code
	attempts int
}

func (f *flaky) Count(ctx context.Context, req *pb.CountRequest) (*pb.CountResponse, error) {
	f.mu.Lock()
	f.attempts++
	n := f.attempts
	f.mu.Unlock()
	if n <= f.failures {
		return nil, status.Errorf(f.code, "attempt %d fails", n)
	}
	return &pb.CountResponse{Universe: req.GetUniverse(), RowCount: 3000, Count: 3000}, nil
}

func (f *flaky) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts
}

func startFlaky(t *testing.T, f *flaky) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterSegmentationServiceServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func TestServiceConfigIsTheContracts(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "proto", "segsrv", "v1", "segsrv_grpc_service_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var want, got any
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(segsrv.ServiceConfig), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("segsrv.ServiceConfig = %v, the contract's = %v", got, want)
	}
}

func TestRetry(t *testing.T) {
	cases := []struct {
		name         string
		failures     int
		code         codes.Code
		retry        bool
		wantCode     codes.Code
		wantAttempts int
	}{
		{"unavailable is retried", 3, codes.Unavailable, true, codes.OK, 4},
		{"retries stop after 5 attempts", 100, codes.Unavailable, true, codes.Unavailable, 5},
		{"invalid argument is not retried", 1, codes.InvalidArgument, true, codes.InvalidArgument, 1},
		{"resource exhausted is not retried", 1, codes.ResourceExhausted, true, codes.ResourceExhausted, 1},
		{"WithRetry(false) sends once", 1, codes.Unavailable, false, codes.Unavailable, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := &flaky{failures: tc.failures, code: tc.code}
			c, err := segsrv.Dial(startFlaky(t, f), segsrv.WithRetry(tc.retry), segsrv.WithTimeout(10*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			res, err := c.Count(context.Background(), "customers", nil)
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("code %v, want %v (err %v)", got, tc.wantCode, err)
			}
			if err == nil && res.GetRowCount() != 3000 {
				t.Fatalf("row_count %d", res.GetRowCount())
			}
			if f.count() != tc.wantAttempts {
				t.Fatalf("%d attempts, want %d", f.count(), tc.wantAttempts)
			}
		})
	}
}
