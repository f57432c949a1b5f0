package gateway_test

// Live tests: plain HTTP calls to a running segsrv-gateway (SEGSRV_GATEWAY_URL, e.g.
// http://127.0.0.1:8080) in front of a running segsrv (SEGSRV_ADDR) serving the PetNord fixture
// snapshot, each answer compared with the gRPC answer to the same request. The known answers
// are in SEGSRV_FIXTURE (default ../../fixtures/petnord_expected.json). scripts/clients_test.sh
// starts both servers and runs them.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"segsrv.dev/clients/gateway/gateway"
	pb "segsrv.dev/clients/gateway/gen/segsrvv1"
)

type liveFixture struct {
	Universe   string `json:"universe"`
	NCustomers int64  `json:"n_customers"`
	Counts     []struct {
		Condition json.RawMessage `json:"condition"`
		Count     int64           `json:"count"`
	} `json:"counts"`
	Relate struct {
		Condition json.RawMessage `json:"condition"`
		Fields    []string        `json:"fields"`
	} `json:"relate"`
	Assign struct {
		Assignments []struct {
			ID string `json:"id"`
		} `json:"assignments"`
	} `json:"assign"`
}

type live struct {
	url    string
	client pb.SegmentationServiceClient
	fx     liveFixture
}

func setupLive(t *testing.T) *live {
	t.Helper()
	addr, url := os.Getenv("SEGSRV_ADDR"), os.Getenv("SEGSRV_GATEWAY_URL")
	if addr == "" || url == "" {
		t.Skip("SEGSRV_ADDR and SEGSRV_GATEWAY_URL are not both set: these tests need segsrv serving PetNord " +
			"and segsrv-gateway in front of it (bash scripts/clients_test.sh starts both)")
	}
	path := os.Getenv("SEGSRV_FIXTURE")
	if path == "" {
		path = filepath.Join("..", "..", "fixtures", "petnord_expected.json")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the fixture: %v", err)
	}
	l := &live{url: strings.TrimRight(url, "/")}
	if err := json.Unmarshal(raw, &l.fx); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	conn, err := gateway.Dial(addr, gateway.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	l.client = pb.NewSegmentationServiceClient(conn)
	return l
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// post sends body to the gateway's route and returns the HTTP status and the body.
func (l *live) post(t *testing.T, route string, body []byte) (int, []byte) {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Post(l.url+route, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", route, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: reading the body: %v", route, err)
	}
	return resp.StatusCode, out
}

// request builds a request body as the JSON a user would write, and the same request parsed.
func request[M proto.Message](t *testing.T, req M, body map[string]any) ([]byte, M) {
	t.Helper()
	raw, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	if err := protojson.Unmarshal(raw, req); err != nil {
		t.Fatalf("request %s: %v", raw, err)
	}
	return raw, req
}

// withoutInfo clears the ResponseInfo (its server_time_ms differs between two calls).
func withoutInfo(m proto.Message) proto.Message {
	m = proto.Clone(m)
	r := m.ProtoReflect()
	if fd := r.Descriptor().Fields().ByName("info"); fd != nil {
		r.Clear(fd)
	}
	return m
}

// sameAnswer fails unless the HTTP JSON body parses into the gRPC answer (info aside).
func sameAnswer(t *testing.T, route string, httpBody []byte, grpcAnswer proto.Message) {
	t.Helper()
	got := grpcAnswer.ProtoReflect().New().Interface()
	if err := protojson.Unmarshal(httpBody, got); err != nil {
		t.Fatalf("%s: the body is not a %s: %v\n%s", route, got.ProtoReflect().Descriptor().FullName(), err, httpBody)
	}
	if !proto.Equal(withoutInfo(got), withoutInfo(grpcAnswer)) {
		t.Fatalf("%s: HTTP answer\n  %v\ndiffers from the gRPC answer\n  %v", route, withoutInfo(got), withoutInfo(grpcAnswer))
	}
	var info struct {
		Info struct {
			SnapshotName string `json:"snapshotName"`
		} `json:"info"`
	}
	if err := json.Unmarshal(httpBody, &info); err != nil || info.Info.SnapshotName == "" {
		t.Fatalf("%s: no info.snapshotName in %s", route, httpBody)
	}
}

func TestLiveCount(t *testing.T) {
	l := setupLive(t)
	for _, c := range l.fx.Counts {
		body, req := request(t, &pb.CountRequest{}, map[string]any{"universe": l.fx.Universe, "condition": c.Condition})
		code, out := l.post(t, "/v1/count", body)
		if code != http.StatusOK {
			t.Fatalf("POST /v1/count %s: HTTP %d: %s", body, code, out)
		}
		want, err := l.client.Count(ctx(t), req)
		if err != nil {
			t.Fatal(err)
		}
		sameAnswer(t, "/v1/count", out, want)
		if want.GetCount() != c.Count || want.GetRowCount() != l.fx.NCustomers {
			t.Fatalf("count %s: %d of %d, the fixture says %d of %d", c.Condition, want.GetCount(), want.GetRowCount(), c.Count, l.fx.NCustomers)
		}
	}
}

func TestLiveRelate(t *testing.T) {
	l := setupLive(t)
	body, req := request(t, &pb.RelateRequest{}, map[string]any{
		"universe": l.fx.Universe, "condition": l.fx.Relate.Condition, "fields": l.fx.Relate.Fields})
	code, out := l.post(t, "/v1/relate", body)
	if code != http.StatusOK {
		t.Fatalf("POST /v1/relate %s: HTTP %d: %s", body, code, out)
	}
	want, err := l.client.Relate(ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(want.GetHits()) == 0 {
		t.Fatalf("relate %s: no hits over gRPC", body)
	}
	sameAnswer(t, "/v1/relate", out, want)
}

func TestLiveAssign(t *testing.T) {
	l := setupLive(t)
	var ids []string
	for _, a := range l.fx.Assign.Assignments {
		ids = append(ids, a.ID)
	}
	body, req := request(t, &pb.AssignRequest{}, map[string]any{"universe": l.fx.Universe, "ids": ids})
	code, out := l.post(t, "/v1/assign", body)
	if code != http.StatusOK {
		t.Fatalf("POST /v1/assign %s: HTTP %d: %s", body, code, out)
	}
	want, err := l.client.Assign(ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(want.GetAssignments()) != len(ids) {
		t.Fatalf("assign: %d assignments for %d ids", len(want.GetAssignments()), len(ids))
	}
	sameAnswer(t, "/v1/assign", out, want)
}

// The ExportMembers stream is newline-delimited JSON, one {"result": message} per line, in the
// order of the gRPC stream.
func TestLiveExportMembersJSONLines(t *testing.T) {
	l := setupLive(t)
	body, req := request(t, &pb.ExportMembersRequest{}, map[string]any{
		"universe": l.fx.Universe, "condition": l.fx.Counts[0].Condition, "chunk_size": 250})
	code, out := l.post(t, "/v1/export-members", body)
	if code != http.StatusOK {
		t.Fatalf("POST /v1/export-members %s: HTTP %d: %s", body, code, out)
	}
	stream, err := l.client.ExportMembers(ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	var want []*pb.ExportMembersResponse
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, m)
	}
	lines := bufio.NewScanner(bytes.NewReader(out))
	lines.Buffer(nil, 64<<20)
	n, members := 0, 0
	for lines.Scan() {
		var line struct {
			Result json.RawMessage `json:"result"`
			Error  json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(lines.Bytes(), &line); err != nil || line.Error != nil || line.Result == nil {
			t.Fatalf("export line %d is not {\"result\": ...}: %s", n+1, lines.Bytes())
		}
		if n >= len(want) {
			t.Fatalf("export: more than the %d gRPC messages", len(want))
		}
		sameAnswer(t, "/v1/export-members", line.Result, want[n])
		members += len(want[n].GetIds())
		n++
	}
	if n != len(want) {
		t.Fatalf("export: %d JSON lines, %d gRPC messages", n, len(want))
	}
	if total := want[0].GetTotalCount(); members != int(l.fx.Counts[0].Count) || total != l.fx.Counts[0].Count {
		t.Fatalf("export: total %d, %d ids, the fixture counts %d", total, members, l.fx.Counts[0].Count)
	}
	if len(want) < 3 {
		t.Fatalf("export: %d messages, want the total and several chunks of 250", len(want))
	}
}

// A misspelt field is HTTP 400 with the gRPC status as its body: the same message and details
// (the BadRequest field violation naming condition.term.field, the ErrorInfo reason).
func TestLiveBadRequest(t *testing.T) {
	l := setupLive(t)
	body, req := request(t, &pb.CountRequest{}, map[string]any{
		"universe": l.fx.Universe, "condition": map[string]any{"term": map[string]any{"field": "regoin", "value": "x"}}})
	code, out := l.post(t, "/v1/count", body)
	if code != http.StatusBadRequest {
		t.Fatalf("POST /v1/count %s: HTTP %d, want 400: %s", body, code, out)
	}
	_, err := l.client.Count(ctx(t), req, grpc.WaitForReady(true))
	want := status.Convert(err).Proto()
	got := want.ProtoReflect().New().Interface()
	if err := protojson.Unmarshal(out, got); err != nil {
		t.Fatalf("the error body is not a google.rpc.Status: %v\n%s", err, out)
	}
	if !proto.Equal(got, want) {
		t.Fatalf("HTTP error body\n  %v\ndiffers from the gRPC status\n  %v", got, want)
	}
	if fields := violatedFields(t, got.(*spb.Status)); len(fields) != 1 || fields[0] != "condition.term.field" {
		t.Fatalf("BadRequest field violations %v, want [condition.term.field], in %s", fields, out)
	}
}
