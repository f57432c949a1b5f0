package gateway_test

// The gateway in front of an in-process fake SegmentationService on 127.0.0.1: the status ->
// HTTP mapping with the details, the headers passed through, the JSON form, the routes of every
// method in the OpenAPI document, /healthz.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"segsrv.dev/clients/gateway/gateway"
	pb "segsrv.dev/clients/gateway/gen/segsrvv1"
)

// fakeBackend answers Count with err (when set) or a count, records the metadata of the last
// call, and streams two ExportMembers messages.
type fakeBackend struct {
	pb.UnimplementedSegmentationServiceServer
	err   error
	md    metadata.MD
	calls int
}

func (f *fakeBackend) Count(ctx context.Context, req *pb.CountRequest) (*pb.CountResponse, error) {
	f.calls++
	f.md, _ = metadata.FromIncomingContext(ctx)
	_ = grpc.SetTrailer(ctx, metadata.Pairs("x-request-id", "req-42"))
	if f.err != nil {
		return nil, f.err
	}
	return &pb.CountResponse{Universe: req.GetUniverse(), Count: 0, RowCount: 3000}, nil
}

func (f *fakeBackend) ExportMembers(req *pb.ExportMembersRequest, stream grpc.ServerStreamingServer[pb.ExportMembersResponse]) error {
	if err := stream.Send(&pb.ExportMembersResponse{TotalCount: 3}); err != nil {
		return err
	}
	return stream.Send(&pb.ExportMembersResponse{Ids: []string{"a", "b", "c"}})
}

// start serves fake (and a health service in state serving) on 127.0.0.1 and the gateway in
// front of it; it returns the gateway's base URL.
func start(t *testing.T, fake *fakeBackend, serving healthpb.HealthCheckResponse_ServingStatus) string {
	t.Helper()
	return startGateway(t, startBackend(t, fake, serving), gateway.Options{})
}

// startBackend serves fake and a health service on 127.0.0.1; it returns the address.
func startBackend(t *testing.T, fake *fakeBackend, serving healthpb.HealthCheckResponse_ServingStatus,
	opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer(opts...)
	pb.RegisterSegmentationServiceServer(server, fake)
	hs := health.NewServer()
	hs.SetServingStatus("", serving)
	healthpb.RegisterHealthServer(server, hs)
	go func() { _ = server.Serve(lis) }()
	t.Cleanup(server.Stop)
	return lis.Addr().String()
}

// startGateway serves the gateway in front of backend; it returns its base URL.
func startGateway(t *testing.T, backend string, o gateway.Options) string {
	t.Helper()
	conn, err := gateway.Dial(backend, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	handler, err := gateway.NewHandler(context.Background(), conn)
	if err != nil {
		t.Fatal(err)
	}
	web := httptest.NewServer(handler)
	t.Cleanup(web.Close)
	return web.URL
}

func do(t *testing.T, method, url, body string, header map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(out)
}

func badRequest(t *testing.T, code codes.Code) error {
	t.Helper()
	st, err := status.New(code, "universe 'customers' has no field 'regoin'").WithDetails(
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "condition.term.field", Description: "no field 'regoin' (did you mean 'region'?)"}}},
		&errdetails.ErrorInfo{Reason: "UNKNOWN_FIELD", Domain: "segsrv.dev"})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

// Each gRPC status becomes grpc-gateway's HTTP status, with the google.rpc.Status as the JSON
// body: code, message and every detail, the BadRequest field violations included.
func TestErrorsMapToHTTPStatusWithDetails(t *testing.T) {
	for code, want := range map[codes.Code]int{
		codes.InvalidArgument:    http.StatusBadRequest,
		codes.FailedPrecondition: http.StatusBadRequest,
		codes.NotFound:           http.StatusNotFound,
		codes.PermissionDenied:   http.StatusForbidden,
		codes.Unauthenticated:    http.StatusUnauthorized,
		codes.ResourceExhausted:  http.StatusTooManyRequests,
		codes.Unimplemented:      http.StatusNotImplemented,
		codes.DeadlineExceeded:   http.StatusGatewayTimeout,
		codes.DataLoss:           http.StatusInternalServerError,
		codes.Internal:           http.StatusInternalServerError,
	} {
		sent := badRequest(t, code)
		url := start(t, &fakeBackend{err: sent}, healthpb.HealthCheckResponse_SERVING)
		resp, body := do(t, "POST", url+"/v1/count", `{"universe": "customers"}`, nil)
		if resp.StatusCode != want {
			t.Errorf("%v: HTTP %d, want %d", code, resp.StatusCode, want)
		}
		got := status.New(codes.OK, "").Proto()
		if err := protojson.Unmarshal([]byte(body), got); err != nil {
			t.Fatalf("%v: the body is not a google.rpc.Status: %v\n%s", code, err, body)
		}
		if !proto.Equal(got, status.Convert(sent).Proto()) {
			t.Errorf("%v: body %s\nis not the status sent, %v", code, body, status.Convert(sent).Proto())
		}
		if fields := violatedFields(t, got); len(fields) != 1 || fields[0] != "condition.term.field" {
			t.Errorf("%v: field violations %v in %s", code, fields, body)
		}
		if id := resp.Header.Get("X-Request-Id"); id != "req-42" {
			t.Errorf("%v: X-Request-Id %q, want segsrv's req-42", code, id)
		}
	}
}

// violatedFields lists the fields of the BadRequest details of st.
func violatedFields(t *testing.T, st *spb.Status) []string {
	t.Helper()
	var fields []string
	for _, detail := range st.GetDetails() {
		var bad errdetails.BadRequest
		if detail.MessageIs(&bad) {
			if err := detail.UnmarshalTo(&bad); err != nil {
				t.Fatal(err)
			}
			for _, v := range bad.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

// Authorization and X-Request-Id reach segsrv as authorization / x-request-id metadata; segsrv's
// x-request-id comes back as X-Request-Id.
func TestHeadersPassThroughAsMetadata(t *testing.T) {
	fake := &fakeBackend{}
	url := start(t, fake, healthpb.HealthCheckResponse_SERVING)
	resp, body := do(t, "POST", url+"/v1/count", `{"universe": "customers"}`,
		map[string]string{"Authorization": "Bearer s3cret", "X-Request-Id": "campaign-7"})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP %d: %s", resp.StatusCode, body)
	}
	if got := fake.md.Get("authorization"); len(got) != 1 || got[0] != "Bearer s3cret" {
		t.Errorf("authorization metadata %q", got)
	}
	if got := fake.md.Get("x-request-id"); len(got) != 1 || got[0] != "campaign-7" {
		t.Errorf("x-request-id metadata %q", got)
	}
	if id := resp.Header.Get("X-Request-Id"); id != "req-42" {
		t.Errorf("X-Request-Id %q, want req-42", id)
	}
}

// Zeros are written (a count of 0 is "count": "0", int64 as a string in proto3 JSON), and an
// unknown field in the body is a 400 naming it, never sent to segsrv.
func TestJSONForm(t *testing.T) {
	fake := &fakeBackend{}
	url := start(t, fake, healthpb.HealthCheckResponse_SERVING)
	_, body := do(t, "POST", url+"/v1/count", `{"universe": "customers"}`, nil)
	var got map[string]any
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if got["count"] != "0" || got["rowCount"] != "3000" || got["suppressed"] != false {
		t.Errorf("count body %s", body)
	}

	resp, body := do(t, "POST", url+"/v1/count", `{"universe": "customers", "conditoin": {}}`, nil)
	st := status.New(codes.OK, "").Proto()
	if err := protojson.Unmarshal([]byte(body), st); err != nil || resp.StatusCode != http.StatusBadRequest ||
		!strings.Contains(st.GetMessage(), "unknown field") || !strings.Contains(st.GetMessage(), "conditoin") {
		t.Errorf("unknown body field: HTTP %d %s", resp.StatusCode, body)
	}
	if fake.calls != 1 {
		t.Errorf("segsrv got %d calls, want 1 (not the one with an unknown field)", fake.calls)
	}
}

func TestStreamIsJSONLines(t *testing.T) {
	url := start(t, &fakeBackend{}, healthpb.HealthCheckResponse_SERVING)
	resp, body := do(t, "POST", url+"/v1/export-members", `{}`, nil)
	lines := strings.Split(strings.TrimSpace(body), "\n")
	if resp.StatusCode != http.StatusOK || len(lines) != 2 {
		t.Fatalf("HTTP %d, %d lines: %s", resp.StatusCode, len(lines), body)
	}
	want := []*pb.ExportMembersResponse{{TotalCount: 3}, {Ids: []string{"a", "b", "c"}}}
	for i, line := range lines {
		var wrapped struct {
			Result json.RawMessage `json:"result"`
		}
		got := &pb.ExportMembersResponse{}
		if err := json.Unmarshal([]byte(line), &wrapped); err != nil || protojson.Unmarshal(wrapped.Result, got) != nil ||
			!proto.Equal(got, want[i]) {
			t.Errorf("line %d: %s, want {\"result\": %v}", i+1, line, want[i])
		}
	}
}

// Every SegmentationService method has its POST /v1/... route in http_rules.yaml, served, and
// in the OpenAPI document.
func TestEveryMethodHasARoute(t *testing.T) {
	url := start(t, &fakeBackend{}, healthpb.HealthCheckResponse_SERVING)
	resp, body := do(t, "GET", url+"/openapi.json", "", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/openapi.json: HTTP %d", resp.StatusCode)
	}
	var doc struct {
		Info struct {
			Title string `json:"title"`
		} `json:"info"`
		Paths map[string]map[string]struct {
			OperationID string `json:"operationId"`
		} `json:"paths"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Info.Title != "segsrv HTTP/JSON gateway" {
		t.Errorf("OpenAPI title %q (openapi.yaml)", doc.Info.Title)
	}
	routes := map[string]string{} // method -> path
	for path, ops := range doc.Paths {
		routes[strings.TrimPrefix(ops["post"].OperationID, "SegmentationService_")] = path
	}
	methods := pb.File_segsrv_v1_segsrv_proto.Services().ByName("SegmentationService").Methods()
	for i := 0; i < methods.Len(); i++ {
		name := string(methods.Get(i).Name())
		path, ok := routes[name]
		if !ok || !strings.HasPrefix(path, "/v1/") {
			t.Errorf("%s: no POST /v1/... route in the OpenAPI document (routes: %v)", name, routes)
			continue
		}
		// the fake implements Count and ExportMembers only: a 501 from segsrv proves the route
		resp, body := do(t, "POST", url+path, `{}`, nil)
		if want := map[string]int{"Count": 200, "ExportMembers": 200}[name]; want == 0 && resp.StatusCode != http.StatusNotImplemented ||
			want != 0 && resp.StatusCode != want {
			t.Errorf("POST %s (%s): HTTP %d %s", path, name, resp.StatusCode, body)
		}
	}
	if len(routes) != methods.Len() {
		t.Errorf("%d routes for %d methods: %v", len(routes), methods.Len(), routes)
	}
}

// A wrong method or path is a JSON error too, saying what the routes are.
func TestRoutingErrors(t *testing.T) {
	url := start(t, &fakeBackend{}, healthpb.HealthCheckResponse_SERVING)
	for _, c := range []struct {
		method, path string
		code         int
		says         string
	}{
		{"GET", "/v1/count", http.StatusMethodNotAllowed, "GET /v1/count: method not allowed; every route takes POST"},
		{"POST", "/v1/cuont", http.StatusNotFound, "no route POST /v1/cuont: the routes are POST /v1/<method>"},
		{"GET", "/", http.StatusNotFound, "no route GET /"},
	} {
		resp, body := do(t, c.method, url+c.path, "", nil)
		st := status.New(codes.OK, "").Proto()
		if err := protojson.Unmarshal([]byte(body), st); err != nil || resp.StatusCode != c.code ||
			!strings.Contains(st.GetMessage(), c.says) {
			t.Errorf("%s %s: HTTP %d %s (%v)", c.method, c.path, resp.StatusCode, body, err)
		}
	}
}

func TestHealthz(t *testing.T) {
	for serving, want := range map[healthpb.HealthCheckResponse_ServingStatus]int{
		healthpb.HealthCheckResponse_SERVING:     http.StatusOK,
		healthpb.HealthCheckResponse_NOT_SERVING: http.StatusServiceUnavailable,
	} {
		url := start(t, &fakeBackend{}, serving)
		resp, body := do(t, "GET", url+"/healthz", "", nil)
		if resp.StatusCode != want || !strings.Contains(body, `"status":"`+serving.String()+`"`) {
			t.Errorf("%v: HTTP %d %s", serving, resp.StatusCode, body)
		}
	}

	// no backend at all: 503 UNREACHABLE
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	resp, body := do(t, "GET", startGateway(t, addr, gateway.Options{})+"/healthz", "", nil)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, `"status":"UNREACHABLE"`) {
		t.Errorf("no backend: HTTP %d %s", resp.StatusCode, body)
	}
}

func TestDialNamesAMissingCAFile(t *testing.T) {
	_, err := gateway.Dial("127.0.0.1:1", gateway.Options{CAFile: "/nonexistent/ca.pem"})
	if err == nil || !strings.Contains(err.Error(), "-backend-ca /nonexistent/ca.pem") {
		t.Fatalf("error %v", err)
	}
}

func TestDialNamesABadBackend(t *testing.T) {
	for _, backend := range []string{"", "127.0.0.1", ":50051", "127.0.0.1:"} {
		_, err := gateway.Dial(backend, gateway.Options{})
		if err == nil || !strings.Contains(err.Error(), "want host:port") {
			t.Errorf("-backend %q: error %v", backend, err)
		}
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 (its own CA) and returns the server
// credentials and the PEM file's path.
func selfSigned(t *testing.T) (credentials.TransportCredentials, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "segsrv test"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	return credentials.NewServerTLSFromCert(&pair), path
}

// -backend-ca: TLS to a backend whose certificate the CA file signs; without it the TLS backend
// is unreachable (503).
func TestBackendTLS(t *testing.T) {
	creds, caFile := selfSigned(t)
	backend := startBackend(t, &fakeBackend{}, healthpb.HealthCheckResponse_SERVING, grpc.Creds(creds))

	resp, body := do(t, "POST", startGateway(t, backend, gateway.Options{CAFile: caFile})+"/v1/count", `{}`, nil)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("with -backend-ca: HTTP %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, "POST", startGateway(t, backend, gateway.Options{})+"/v1/count", `{}`, nil)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("plaintext to a TLS backend: HTTP %d %s, want 503", resp.StatusCode, body)
	}
}
