package api

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
)

// readmeEndpoint is an endpoint the README documents: in a row of a
// reference table ("| `GET /vms/{id}` | answer |") or a heading
// ("### `POST /vms`"), with the statuses it names ("`200`", "`404
// vm-not-found`").
type readmeEndpoint struct {
	line     int // where it is first named
	row      int // its table row, 0 for none
	statuses []string
}

var (
	readmeRow     = regexp.MustCompile("^\\| `(GET|HEAD|POST|PUT|PATCH|DELETE) (/[^` ]*)` \\|(.*)$")
	readmeHeading = regexp.MustCompile("^#+ `(GET|HEAD|POST|PUT|PATCH|DELETE) (/[^` ]*)`$")
	// A status in backticks, alone or before an error code or body.
	readmeStatus = regexp.MustCompile("`([1-5][0-9][0-9])(?:[ `])")
)

// readmeEndpoints returns the README's endpoints, "GET /vms/{id}" → where.
func readmeEndpoints(t *testing.T) map[string]readmeEndpoint {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]readmeEndpoint{}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		var method, path, rest string
		row := false
		if m := readmeRow.FindStringSubmatch(line); m != nil {
			method, path, rest, row = m[1], m[2], m[3], true
		} else if m := readmeHeading.FindStringSubmatch(line); m != nil {
			method, path = m[1], m[2]
		} else {
			continue
		}
		op := method + " " + path
		e := out[op]
		if e.line == 0 {
			e.line = n
		}
		if row {
			if e.row != 0 {
				t.Errorf("README.md:%d: %s has a row already (line %d)", n, op, e.row)
			}
			e.row = n
		}
		for _, m := range readmeStatus.FindAllStringSubmatch(rest, -1) {
			e.statuses = append(e.statuses, m[1])
		}
		out[op] = e
	}
	if len(out) < 20 {
		t.Fatalf("found only %d endpoints in the README; the scan is broken", len(out))
	}
	return out
}

// notInOpenAPI are the README's endpoints left out of api/openapi.yaml
// on purpose: the dashboard's page is HTML for browsers, not JSON API
// (internal/server's TestOpenAPI leaves it out the same way).
var notInOpenAPI = []string{"GET /"}

// TestREADMEListsEveryOperation checks the README's endpoint tables
// against api/openapi.yaml: every operation of the document is in them,
// every endpoint they list is an operation of the document, and every
// status a row names is one the document gives that operation.
func TestREADMEListsEveryOperation(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(OpenAPIYAML)
	if err != nil {
		t.Fatalf("load api/openapi.yaml: %v", err)
	}
	readme := readmeEndpoints(t)
	ops := map[string]*openapi3.Operation{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			ops[method+" "+path] = op
		}
	}
	var missing []string
	for op := range ops {
		if _, ok := readme[op]; !ok {
			missing = append(missing, op)
		}
	}
	slices.Sort(missing)
	for _, op := range missing {
		t.Errorf("%s is an operation of api/openapi.yaml, but not in the README's endpoint tables", op)
	}
	for name, e := range readme {
		op, ok := ops[name]
		if !ok {
			if !slices.Contains(notInOpenAPI, name) {
				t.Errorf("README.md:%d lists %s, which is not an operation of api/openapi.yaml", e.line, name)
			}
			continue
		}
		for _, st := range e.statuses {
			if op.Responses.Value(st) == nil {
				t.Errorf("README.md:%d: %s answers %s, says the README; api/openapi.yaml does not give it that status", e.line, name, st)
			}
		}
	}
}
