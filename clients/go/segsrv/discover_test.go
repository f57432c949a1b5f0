package segsrv_test

// Discover's deadline and snapshot selector, against an in-process fake server that records
// what each call brought. No segsrv server is needed.

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"segsrv.dev/clients/go/segsrv"
	pb "segsrv.dev/clients/go/segsrvv1"
)

type recorder struct {
	pb.UnimplementedSegmentationServiceServer
	mu       sync.Mutex
	left     time.Duration // time left before the call's deadline; -1: none
	snapshot *pb.SnapshotSelector
}

func (r *recorder) record(ctx context.Context, s *pb.SnapshotSelector) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.left = -1
	if dl, ok := ctx.Deadline(); ok {
		r.left = time.Until(dl)
	}
	r.snapshot = s
}

func (r *recorder) Discover(ctx context.Context, req *pb.DiscoverRequest) (*pb.DiscoverResponse, error) {
	r.record(ctx, req.GetSnapshot())
	return &pb.DiscoverResponse{Universe: req.GetUniverse()}, nil
}

func (r *recorder) Count(ctx context.Context, req *pb.CountRequest) (*pb.CountResponse, error) {
	r.record(ctx, req.GetSnapshot())
	return &pb.CountResponse{Universe: req.GetUniverse()}, nil
}

func (r *recorder) last() (time.Duration, *pb.SnapshotSelector) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.left, r.snapshot
}

func dialRecorder(t *testing.T, opts ...segsrv.Option) (*segsrv.Client, *recorder) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	srv := grpc.NewServer()
	pb.RegisterSegmentationServiceServer(srv, rec)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	c, err := segsrv.Dial(lis.Addr().String(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, rec
}

// within reports whether the time left is in (want - 5 s, want]: the call's deadline was set
// to want when it was sent.
func within(left, want time.Duration) bool { return left > want-5*time.Second && left <= want }

func TestDiscoverDeadline(t *testing.T) {
	cases := []struct {
		name string
		opts []segsrv.Option
		ctx  time.Duration // the caller's deadline; 0: none
		want time.Duration // the deadline Discover must get; -1: none
	}{
		{"the default is DefaultDiscoverTimeout", nil, 0, segsrv.DefaultDiscoverTimeout},
		{"WithTimeout does not shorten it", []segsrv.Option{segsrv.WithTimeout(2 * time.Second)}, 0, segsrv.DefaultDiscoverTimeout},
		{"WithDiscoverTimeout sets it", []segsrv.Option{segsrv.WithDiscoverTimeout(90 * time.Second)}, 0, 90 * time.Second},
		{"WithDiscoverTimeout(0) is none", []segsrv.Option{segsrv.WithDiscoverTimeout(0)}, 0, -1},
		{"the caller's shorter deadline holds", nil, 3 * time.Second, 3 * time.Second},
		{"the caller's longer deadline holds", nil, 10 * time.Minute, 10 * time.Minute},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, rec := dialRecorder(t, tc.opts...)
			ctx := context.Background()
			if tc.ctx > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.ctx)
				defer cancel()
			}
			if _, err := c.Discover(ctx, &pb.DiscoverRequest{Universe: "customers"}); err != nil {
				t.Fatal(err)
			}
			left, _ := rec.last()
			if tc.want < 0 && left != -1 || tc.want >= 0 && !within(left, tc.want) {
				t.Errorf("Discover's deadline in %v, want %v", left, tc.want)
			}
		})
	}
	// other calls keep the ordinary timeout
	c, rec := dialRecorder(t, segsrv.WithTimeout(2*time.Second))
	if _, err := c.Count(context.Background(), "customers", nil); err != nil {
		t.Fatal(err)
	}
	if left, _ := rec.last(); !within(left, 2*time.Second) {
		t.Errorf("Count's deadline in %v, want 2s", left)
	}
}

func TestDiscoverSnapshot(t *testing.T) {
	c, rec := dialRecorder(t, segsrv.WithSnapshot("petnord", "v1"))
	if _, err := c.Discover(context.Background(), &pb.DiscoverRequest{Universe: "customers"}); err != nil {
		t.Fatal(err)
	}
	if _, s := rec.last(); s.GetName() != "petnord" || s.GetVersion() != "v1" {
		t.Errorf("snapshot %v, want the client's petnord v1", s)
	}
	own := &pb.SnapshotSelector{Name: "other"}
	if _, err := c.Discover(context.Background(), &pb.DiscoverRequest{Universe: "customers", Snapshot: own}); err != nil {
		t.Fatal(err)
	}
	if _, s := rec.last(); s.GetName() != "other" || s.GetVersion() != "" {
		t.Errorf("snapshot %v, want the request's own", s)
	}
}
