package segsrv_test

// Unit tests that need no server.

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"segsrv.dev/clients/go/segsrv"
	pb "segsrv.dev/clients/go/segsrvv1"
)

func TestAsErrorReadsDetails(t *testing.T) {
	st := status.New(codes.InvalidArgument, "universe 'customers' has no field 'regoin'")
	st, err := st.WithDetails(
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "condition.term.field", Description: "no field 'regoin' (did you mean 'region'?)"},
		}},
		&errdetails.ErrorInfo{Reason: "UNKNOWN_FIELD", Domain: "segsrv.dev"},
	)
	if err != nil {
		t.Fatal(err)
	}
	got := segsrv.AsError(st.Err())
	var e *segsrv.Error
	if !errors.As(got, &e) {
		t.Fatalf("%T is not *segsrv.Error", got)
	}
	if e.Code != codes.InvalidArgument || e.Reason != "UNKNOWN_FIELD" {
		t.Errorf("code %s reason %q", e.Code, e.Reason)
	}
	if len(e.Violations) != 1 || e.Violations[0].Field != "condition.term.field" {
		t.Errorf("violations %+v", e.Violations)
	}
	if status.Code(got) != codes.InvalidArgument || segsrv.Code(got) != codes.InvalidArgument {
		t.Errorf("status.Code(%v) = %s", got, status.Code(got))
	}
	if segsrv.AsError(nil) != nil {
		t.Error("AsError(nil) != nil")
	}
}

func TestBuildersMatchProtoJSON(t *testing.T) {
	// The fixture's JSON form of a condition and the builders give the same message.
	var fromJSON pb.Condition
	err := protojson.Unmarshal([]byte(`{"all_of": {"conditions": [
		{"value_set": {"field": "region", "values": ["helsinki", "espoo"]}},
		{"negation": {"term": {"field": "churned", "value": "true"}}}]}}`), &fromJSON)
	if err != nil {
		t.Fatal(err)
	}
	built := segsrv.And(segsrv.In("region", "helsinki", "espoo"), segsrv.Not(segsrv.Term("churned", "true")))
	if !proto.Equal(&fromJSON, built) {
		t.Errorf("builders give %v, JSON gives %v", built, &fromJSON)
	}
}

func TestDefaultKeepaliveSuitsGrpcioDefaults(t *testing.T) {
	// A grpcio server by default takes a client ping at most every 5 minutes
	// (grpc.http2.min_ping_interval_without_data_ms = 300000) and none on a connection
	// without calls (grpc.keepalive_permit_without_calls = 0); more gets GOAWAY too_many_pings.
	k := segsrv.DefaultKeepalive
	if k.Time < 5*time.Minute {
		t.Errorf("DefaultKeepalive.Time = %s, below grpcio's 5 min minimum ping interval", k.Time)
	}
	if k.PermitWithoutStream {
		t.Error("DefaultKeepalive pings without calls; grpcio refuses that by default")
	}
	if k.Timeout <= 0 || k.Timeout > time.Minute {
		t.Errorf("DefaultKeepalive.Timeout = %s", k.Timeout)
	}
}
