// Package assets holds the files the gateway serves or uses, copied or generated into this
// directory by generate.sh (gitignored): the OpenAPI document and the gRPC service config.
package assets

import _ "embed"

// OpenAPI is the OpenAPI (Swagger 2.0) document protoc-gen-openapiv2 generates from proto/ and
// http_rules.yaml.
//
//go:embed segsrv.swagger.json
var OpenAPI []byte

// ServiceConfig is proto/segsrv/v1/segsrv_grpc_service_config.json: the retry policy
// (UNAVAILABLE, up to 5 attempts) every segsrv client uses.
//
//go:embed service_config.json
var ServiceConfig string
