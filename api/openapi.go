package api

import _ "embed"

// OpenAPIYAML is the OpenAPI 3.1 description of the API (openapi.yaml
// beside this file), served as JSON at GET /openapi.json and checked
// against the real handlers by internal/server's TestOpenAPI.
//
//go:embed openapi.yaml
var OpenAPIYAML []byte
