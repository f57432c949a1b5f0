// Package gateway is segsrv's HTTP/JSON gateway: grpc-gateway handlers (generated from proto/ and
// http_rules.yaml) in front of a segsrv gRPC server, plus /openapi.json and /healthz.
// docs/gateway.md describes the routes, the JSON form and the error mapping.
package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	// Registers google.rpc.BadRequest, ErrorInfo, RequestInfo, ... so that the error body's
	// details (google.protobuf.Any) marshal to JSON instead of failing as unknown types.
	_ "google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"segsrv.dev/clients/gateway/assets"
	pb "segsrv.dev/clients/gateway/gen/segsrvv1"
)

// RequestIDHeader is passed to segsrv as the x-request-id metadata, and segsrv's x-request-id
// (trailing metadata) comes back in it.
const RequestIDHeader = "X-Request-Id"

// HealthTimeout bounds the backend health check of /healthz.
const HealthTimeout = 2 * time.Second

// Options of Dial.
type Options struct {
	// CAFile, when set, makes the connection to the backend TLS, trusting the CA certificates
	// in this PEM file; empty means plaintext.
	CAFile string
	// MaxResponseBytes is the largest response message accepted from the backend.
	MaxResponseBytes int
}

// Dial opens a (lazy) connection to the segsrv gRPC server at backend (host:port), with the
// retry policy every segsrv client uses.
func Dial(backend string, o Options) (*grpc.ClientConn, error) {
	if host, port, err := net.SplitHostPort(backend); err != nil || host == "" || port == "" {
		return nil, fmt.Errorf("-backend %q: want host:port, e.g. 127.0.0.1:50051", backend)
	}
	creds := insecure.NewCredentials()
	if o.CAFile != "" {
		tlsCreds, err := credentials.NewClientTLSFromFile(o.CAFile, "")
		if err != nil {
			return nil, fmt.Errorf("-backend-ca %s: %w", o.CAFile, err)
		}
		creds = tlsCreds
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultServiceConfig(assets.ServiceConfig),
	}
	if o.MaxResponseBytes > 0 {
		dial = append(dial, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(o.MaxResponseBytes)))
	}
	conn, err := grpc.NewClient(backend, dial...)
	if err != nil {
		return nil, fmt.Errorf("-backend %q: %w", backend, err)
	}
	return conn, nil
}

// JSON is the gateway's marshaler: proto3 JSON with every field present (zeros included), and
// an unknown field in a request body is an error (400) rather than silently dropped.
func JSON() runtime.Marshaler {
	return &runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: true},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}
}

// incomingHeader passes X-Request-Id through as x-request-id metadata, besides grpc-gateway's
// defaults (Authorization as authorization, Grpc-Metadata-* without the prefix).
func incomingHeader(key string) (string, bool) {
	if textproto.CanonicalMIMEHeaderKey(key) == RequestIDHeader {
		return "x-request-id", true
	}
	return runtime.DefaultHeaderMatcher(key)
}

// setRequestID copies segsrv's x-request-id (trailing metadata, known once a unary call has
// ended) into the X-Request-Id response header, before the body is written.
func setRequestID(ctx context.Context, w http.ResponseWriter) {
	md, ok := runtime.ServerMetadataFromContext(ctx)
	if !ok {
		return
	}
	for _, part := range []metadata.MD{md.TrailerMD, md.HeaderMD} {
		if ids := part.Get("x-request-id"); len(ids) > 0 {
			w.Header().Set(RequestIDHeader, ids[0])
			return
		}
	}
}

// routingError answers a request no route matches with the google.rpc.Status JSON body of every
// other error, saying what the routes are.
func routingError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler,
	w http.ResponseWriter, r *http.Request, httpStatus int) {
	var st *status.Status
	switch httpStatus {
	case http.StatusMethodNotAllowed:
		st = status.Newf(codes.Unimplemented, "%s %s: method not allowed; every route takes POST with the request "+
			"as its JSON body (GET /openapi.json lists them)", r.Method, r.URL.Path)
	case http.StatusNotFound:
		st = status.Newf(codes.NotFound, "no route %s %s: the routes are POST /v1/<method> "+
			"(GET /openapi.json lists them)", r.Method, r.URL.Path)
	default:
		runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, httpStatus)
		return
	}
	body, err := m.Marshal(st.Proto())
	if err != nil {
		http.Error(w, st.Message(), httpStatus)
		return
	}
	w.Header().Set("Content-Type", m.ContentType(st.Proto()))
	w.WriteHeader(httpStatus)
	_, _ = w.Write(body)
}

// NewHandler serves the SegmentationService routes over conn, /openapi.json and /healthz.
func NewHandler(ctx context.Context, conn *grpc.ClientConn) (http.Handler, error) {
	mux := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, JSON()),
		runtime.WithIncomingHeaderMatcher(incomingHeader),
		runtime.WithRoutingErrorHandler(routingError),
		runtime.WithForwardResponseOption(func(ctx context.Context, w http.ResponseWriter, _ proto.Message) error {
			setRequestID(ctx, w)
			return nil
		}),
		runtime.WithErrorHandler(func(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler,
			w http.ResponseWriter, r *http.Request, err error) {
			setRequestID(ctx, w)
			runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
		}),
	)
	if err := pb.RegisterSegmentationServiceHandlerClient(ctx, mux, pb.NewSegmentationServiceClient(conn)); err != nil {
		return nil, err
	}
	health := healthpb.NewHealthClient(conn)
	root := http.NewServeMux()
	root.Handle("/", mux) // the SegmentationService routes, and JSON errors for any other path
	root.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(assets.OpenAPI)
	})
	root.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		code, body := checkHealth(r.Context(), health)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(body)
	})
	return root, nil
}

// HealthBody is the JSON body of /healthz.
type HealthBody struct {
	// Status is the backend's grpc.health.v1 status (SERVING, NOT_SERVING, ...) or UNREACHABLE.
	Status string `json:"status"`
	// Error says why the backend did not answer (UNREACHABLE only).
	Error string `json:"error,omitempty"`
}

// checkHealth asks the backend's grpc.health.v1 service about the server as a whole: 200 when
// SERVING, 503 otherwise.
func checkHealth(ctx context.Context, health healthpb.HealthClient) (int, HealthBody) {
	ctx, cancel := context.WithTimeout(ctx, HealthTimeout)
	defer cancel()
	reply, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return http.StatusServiceUnavailable, HealthBody{Status: "UNREACHABLE", Error: err.Error()}
	}
	body := HealthBody{Status: reply.GetStatus().String()}
	if reply.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return http.StatusServiceUnavailable, body
	}
	return http.StatusOK, body
}
