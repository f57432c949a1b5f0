// Package segsrv is a small Go client of segsrv's gRPC service
// segsrv.v1.SegmentationService (proto/segsrv/v1/segsrv.proto).
//
// The protobuf messages and stubs live in segsrv.dev/clients/go/segsrvv1, generated from
// proto/ by clients/go/generate.sh. This package wraps them with a Client that dials with
// sensible defaults (keepalive settings a grpcio server accepts, a per-call timeout, a
// default snapshot), condition builders (Term, In, And, Or, Not, Segment, AllRows) and an
// Error type that exposes the google.rpc.BadRequest field violations and the
// google.rpc.ErrorInfo reason the server attaches to every error.
//
//	c, err := segsrv.Dial("127.0.0.1:50051")
//	if err != nil { ... }
//	defer c.Close()
//	res, err := c.Count(ctx, "customers", segsrv.Term("churned", "true"))
//	fmt.Println(res.GetCount())
package segsrv

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	pb "segsrv.dev/clients/go/segsrvv1"
)

// DefaultTimeout is the deadline given to a call whose context has none.
const DefaultTimeout = 10 * time.Second

// DefaultDiscoverTimeout is the deadline given to a Discover call whose context has none: a
// search counts many conjunctions and can take seconds on big data.
const DefaultDiscoverTimeout = 60 * time.Second

// DefaultKeepalive are the client keepalive parameters Dial uses. A grpcio (gRPC core)
// server, as `segsrv serve` is, by default accepts a ping at most every 5 minutes while
// there is no data to send (grpc.http2.min_ping_interval_without_data_ms = 300000),
// refuses pings on a connection without calls (grpc.keepalive_permit_without_calls = 0)
// and closes the connection with GOAWAY "too_many_pings" after 2 bad pings
// (grpc.http2.max_ping_strikes = 2). So: ping after 5 minutes of inactivity, only while a
// call is in flight, and give the ack 20 seconds.
var DefaultKeepalive = keepalive.ClientParameters{
	Time:                5 * time.Minute,
	Timeout:             20 * time.Second,
	PermitWithoutStream: false,
}

// ServiceConfig is the gRPC service config Dial gives the channel: a call that fails with
// UNAVAILABLE (its server process was killed, its connection reset, no snapshot loaded yet)
// is sent again, up to 5 attempts in all with a back-off from 100 ms doubling to 1 s, within
// the call's deadline. Every segsrv method is read-only, so a retry is safe. It is
// proto/segsrv/v1/segsrv_grpc_service_config.json, which the tests compare with this.
const ServiceConfig = `{
  "methodConfig": [
    {
      "name": [{"service": "segsrv.v1.SegmentationService"}],
      "retryPolicy": {
        "maxAttempts": 5,
        "initialBackoff": "0.1s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"]
      }
    }
  ]
}`

// Client is a connection to a segsrv server. It is safe for concurrent use.
type Client struct {
	conn     *grpc.ClientConn
	rpc      pb.SegmentationServiceClient
	health   healthpb.HealthClient
	snapshot *pb.SnapshotSelector
	timeout  time.Duration
	discover time.Duration
}

type options struct {
	timeout   time.Duration
	discover  time.Duration
	snapshot  *pb.SnapshotSelector
	keepalive keepalive.ClientParameters
	retry     bool
	dialOpts  []grpc.DialOption
}

// Option configures Dial.
type Option func(*options)

// WithTimeout sets the deadline of calls whose context has none (default DefaultTimeout;
// 0 means no deadline).
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithDiscoverTimeout sets the deadline of Discover calls whose context has none (default
// DefaultDiscoverTimeout; 0 means no deadline).
func WithDiscoverTimeout(d time.Duration) Option { return func(o *options) { o.discover = d } }

// WithSnapshot sets the snapshot (name, and version to pin; either may be empty) of
// requests that do not name one themselves. Empty name: the server's only snapshot.
func WithSnapshot(name, version string) Option {
	return func(o *options) { o.snapshot = &pb.SnapshotSelector{Name: name, Version: version} }
}

// WithKeepalive replaces DefaultKeepalive. Pinging more often than every 5 minutes needs a
// server configured to permit it (see docs/clients.md).
func WithKeepalive(p keepalive.ClientParameters) Option {
	return func(o *options) { o.keepalive = p }
}

// WithRetry turns the ServiceConfig retry policy on (the default) or off. A service
// config from the name resolver, or grpc.WithDefaultServiceConfig in WithDialOptions,
// takes precedence.
func WithRetry(on bool) Option { return func(o *options) { o.retry = on } }

// WithDialOptions adds gRPC dial options (e.g. transport credentials, interceptors). They
// come after Dial's own, so they override them.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, opts...) }
}

// Dial creates a client of the server at addr ("host:port"). Like grpc.NewClient it does
// not connect yet: the first call does (use Health to wait for a server). The connection
// is plaintext unless WithDialOptions supplies transport credentials.
func Dial(addr string, opts ...Option) (*Client, error) {
	o := options{timeout: DefaultTimeout, discover: DefaultDiscoverTimeout, keepalive: DefaultKeepalive, retry: true}
	for _, opt := range opts {
		opt(&o)
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(o.keepalive),
	}
	if o.retry {
		dial = append(dial, grpc.WithDefaultServiceConfig(ServiceConfig))
	} else {
		dial = append(dial, grpc.WithDisableRetry())
	}
	dial = append(dial, o.dialOpts...)
	conn, err := grpc.NewClient(addr, dial...)
	if err != nil {
		return nil, fmt.Errorf("segsrv: dial %s: %w", addr, err)
	}
	return &Client{
		conn:     conn,
		rpc:      pb.NewSegmentationServiceClient(conn),
		health:   healthpb.NewHealthClient(conn),
		snapshot: o.snapshot,
		timeout:  o.timeout,
		discover: o.discover,
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the underlying connection.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Stub is the generated client, for methods this wrapper does not cover (ScoreSegment,
// Evaluate, ListSegments, ...). Its errors are plain gRPC statuses; AsError converts them.
func (c *Client) Stub() pb.SegmentationServiceClient { return c.rpc }

func (c *Client) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return withDefaultTimeout(ctx, c.timeout)
}

func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || d <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

func (c *Client) selector(s *pb.SnapshotSelector) *pb.SnapshotSelector {
	if s != nil || c.snapshot == nil {
		return s
	}
	return &pb.SnapshotSelector{Name: c.snapshot.GetName(), Version: c.snapshot.GetVersion()}
}

// Count returns the number of rows of universe matching cond (nil: every row). universe
// may be empty when the snapshot has one universe.
func (c *Client) Count(ctx context.Context, universe string, cond *pb.Condition) (*pb.CountResponse, error) {
	return c.CountRequest(ctx, &pb.CountRequest{Universe: universe, Condition: cond})
}

// CountRequest sends a full CountRequest (the client's snapshot if it names none).
func (c *Client) CountRequest(ctx context.Context, req *pb.CountRequest) (*pb.CountResponse, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	req.Snapshot = c.selector(req.GetSnapshot())
	res, err := c.rpc.Count(ctx, req)
	return res, AsError(err)
}

// Relate returns the features that over- or under-index in req.Condition, with exact
// statistics (the client's snapshot if req names none).
func (c *Client) Relate(ctx context.Context, req *pb.RelateRequest) (*pb.RelateResponse, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	req.Snapshot = c.selector(req.GetSnapshot())
	res, err := c.rpc.Relate(ctx, req)
	return res, AsError(err)
}

// SnapshotInfo describes the snapshot: its universes (only universe, if not empty), their
// fields and, with includeValues, every value of every field with its count.
func (c *Client) SnapshotInfo(ctx context.Context, universe string, includeValues bool) (*pb.GetSnapshotInfoResponse, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	res, err := c.rpc.GetSnapshotInfo(ctx, &pb.GetSnapshotInfoRequest{
		Snapshot: c.selector(nil), Universe: universe, IncludeValues: includeValues,
	})
	return res, AsError(err)
}

// Predict returns the probability of every value of req.TargetField for a customer (req.Id
// and/or req.Evidence) within req.Segment, each with its explanation:
// base_probability * product(factors) / normalizer == probability.
func (c *Client) Predict(ctx context.Context, req *pb.PredictRequest) (*pb.PredictResponse, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	req.Snapshot = c.selector(req.GetSnapshot())
	res, err := c.rpc.Predict(ctx, req)
	return res, AsError(err)
}

// Assign returns the catalog segments of each id (unknown ids get found = false).
func (c *Client) Assign(ctx context.Context, req *pb.AssignRequest) (*pb.AssignResponse, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	req.Snapshot = c.selector(req.GetSnapshot())
	res, err := c.rpc.Assign(ctx, req)
	return res, AsError(err)
}

// Discover searches req.Universe for segments: without req.Target, conjunctions of features
// that co-occur beyond what independence and every split of them predict; with a target (e.g.
// Term("churned", "true")), conjunctions where its rate is high or low; with req.K > 0, also a
// segmentation of K personas among them (the client's snapshot if req names none). A ctx
// without a deadline gets the client's Discover timeout (DefaultDiscoverTimeout, 60 s, unless
// WithDiscoverTimeout), not WithTimeout's: a search can take seconds on big data.
func (c *Client) Discover(ctx context.Context, req *pb.DiscoverRequest) (*pb.DiscoverResponse, error) {
	ctx, cancel := withDefaultTimeout(ctx, c.discover)
	defer cancel()
	req.Snapshot = c.selector(req.GetSnapshot())
	res, err := c.rpc.Discover(ctx, req)
	return res, AsError(err)
}

// Health returns the serving status of service ("" for the server as a whole, or
// "segsrv.v1.SegmentationService") from grpc.health.v1.Health.
func (c *Client) Health(ctx context.Context, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	res, err := c.health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, AsError(err)
	}
	return res.GetStatus(), nil
}

// WaitServing polls Health until the server reports SERVING or ctx ends.
func (c *Client) WaitServing(ctx context.Context) error {
	for {
		st, err := c.Health(ctx, "")
		if err == nil && st == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("segsrv: server is %s", st)
			}
			return errors.Join(ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
