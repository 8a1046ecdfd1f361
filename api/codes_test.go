package api

import (
	"bufio"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestCodesCatalogue checks that every code is listed once, with a status
// and a meaning, and that LookupCode finds it.
func TestCodesCatalogue(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range Codes {
		if seen[c.Code] {
			t.Errorf("code %q is listed twice", c.Code)
		}
		seen[c.Code] = true
		if !regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`).MatchString(c.Code) {
			t.Errorf("code %q is not lower-case words joined by '-'", c.Code)
		}
		if http.StatusText(c.Status) == "" || c.Status < 400 {
			t.Errorf("code %q has status %d, not an HTTP error status", c.Code, c.Status)
		}
		if c.Meaning == "" {
			t.Errorf("code %q has no meaning", c.Code)
		}
		if got, ok := LookupCode(c.Code); !ok || got != c {
			t.Errorf("LookupCode(%q) = %+v, %v", c.Code, got, ok)
		}
	}
	if _, ok := LookupCode("no-such-code"); ok {
		t.Error("LookupCode found a code that is not in the catalogue")
	}
}

// TestREADMEListsEveryCode checks that the README's error-code table lists
// every code of the catalogue with its status, and no other code.
func TestREADMEListsEveryCode(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	table := readmeCodes(t, string(b))
	for _, c := range Codes {
		status, ok := table[c.Code]
		if !ok {
			t.Errorf("README's error-code table lacks %q (%d: %s)", c.Code, c.Status, c.Meaning)
			continue
		}
		if status != c.Status {
			t.Errorf("README gives %q status %d, the catalogue %d", c.Code, status, c.Status)
		}
	}
	for code := range table {
		if _, ok := LookupCode(code); !ok {
			t.Errorf("README's error-code table lists %q, which is not in api.Codes", code)
		}
	}
}

// readmeCodes returns the codes and statuses of the table under the
// README's "### Error codes" heading: rows "| `code` | status | meaning |".
func readmeCodes(t *testing.T, readme string) map[string]int {
	t.Helper()
	codes := map[string]int{}
	in := false
	sc := bufio.NewScanner(strings.NewReader(readme))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") {
			in = line == "### Error codes"
			continue
		}
		if !in || !strings.HasPrefix(line, "|") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) < 3 {
			t.Fatalf("README error-code row %q has fewer than 3 cells", line)
		}
		first := strings.TrimSpace(cells[0])
		if first == "code" || strings.Trim(first, "-: ") == "" {
			continue // header and separator
		}
		status, err := strconv.Atoi(strings.TrimSpace(cells[1]))
		if err != nil {
			t.Errorf("README error-code row %q: status %q is not a number", line, cells[1])
		}
		code := strings.Trim(first, "`")
		if _, dup := codes[code]; dup {
			t.Errorf("README's error-code table lists %q twice", code)
		}
		codes[code] = status
	}
	if len(codes) == 0 {
		t.Fatal(`README has no "### Error codes" table`)
	}
	return codes
}

// categoryStatus is the HTTP status of each errdefs category, as
// internal/server maps it (statusOf).
var categoryStatus = map[string]int{
	"ErrInvalid":          http.StatusBadRequest,
	"ErrNotFound":         http.StatusNotFound,
	"ErrConflict":         http.StatusConflict,
	"ErrUnsupportedMedia": http.StatusUnsupportedMediaType,
	"ErrUnavailable":      http.StatusServiceUnavailable,
}

// TestCodesInSource reads the module's Go source (tests excepted) and
// checks that every code given to errdefs.New or errdefs.Newf, and every
// constant code of an api.Error literal, is in the catalogue with the
// status its category maps to. A code must be a constant there, so that
// this test can see it.
func TestCodesInSource(t *testing.T) {
	src := readModule(t, "..")
	uses := src.codeUses(t)
	if len(uses) < 20 {
		t.Fatalf("found only %d error codes in the source; the scan is broken", len(uses))
	}
	for _, u := range uses {
		c, ok := LookupCode(u.code)
		switch {
		case !ok:
			t.Errorf("%s: code %q is not in api.Codes (api/codes.go) nor in the README's table", u.pos, u.code)
		case u.status != 0 && u.status != c.Status:
			t.Errorf("%s: code %q has category status %d, the catalogue %d", u.pos, u.code, u.status, c.Status)
		}
	}
}

// goPackage is one directory of parsed Go files.
type goPackage struct {
	files  []*ast.File
	consts map[string]constDecl
}

// constDecl is a constant's expression and the file it is declared in.
type constDecl struct {
	expr ast.Expr
	file *ast.File
}

// module is the parsed non-test Go source of the module.
type module struct {
	path string // module path from go.mod
	fset *token.FileSet
	pkgs map[string]*goPackage // by directory relative to the module root, "/"-separated
}

func readModule(t *testing.T, root string) *module {
	t.Helper()
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := &module{fset: token.NewFileSet(), pkgs: map[string]*goPackage{}}
	for _, line := range strings.Split(string(gomod), "\n") {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "module "); ok {
			m.path = strings.TrimSpace(p)
		}
	}
	if m.path == "" {
		t.Fatal("go.mod names no module")
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(m.fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, filepath.Dir(p))
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		pkg := m.pkgs[rel]
		if pkg == nil {
			pkg = &goPackage{consts: map[string]constDecl{}}
			m.pkgs[rel] = pkg
		}
		pkg.files = append(pkg.files, f)
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if i < len(vs.Values) {
						pkg.consts[n.Name] = constDecl{expr: vs.Values[i], file: f}
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// importDir returns the module directory that name refers to in file f,
// or false if it names no package of this module.
func (m *module) importDir(f *ast.File, name string) (string, bool) {
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		local := path.Base(p)
		if imp.Name != nil {
			local = imp.Name.Name
		}
		if local != name {
			continue
		}
		if p == m.path {
			return ".", true
		}
		rel, ok := strings.CutPrefix(p, m.path+"/")
		return rel, ok
	}
	return "", false
}

// constString evaluates e, in file f of directory dir, to a string
// constant: a literal, a constant of the package, or a constant of another
// package of the module.
func (m *module) constString(dir string, f *ast.File, e ast.Expr) (string, bool) {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind != token.STRING {
			return "", false
		}
		s, err := strconv.Unquote(e.Value)
		return s, err == nil
	case *ast.ParenExpr:
		return m.constString(dir, f, e.X)
	case *ast.Ident:
		c, ok := m.pkgs[dir].consts[e.Name]
		if !ok {
			return "", false
		}
		return m.constString(dir, c.file, c.expr)
	case *ast.SelectorExpr:
		x, ok := e.X.(*ast.Ident)
		if !ok {
			return "", false
		}
		other, ok := m.importDir(f, x.Name)
		if !ok || m.pkgs[other] == nil {
			return "", false
		}
		c, ok := m.pkgs[other].consts[e.Sel.Name]
		if !ok {
			return "", false
		}
		return m.constString(other, c.file, c.expr)
	}
	return "", false
}

// codeUse is one place the source gives an error code.
type codeUse struct {
	pos    token.Position
	code   string
	status int // from the errdefs category; 0 for an api.Error literal
}

// codeUses finds the codes of errdefs.New/Newf calls and of api.Error
// literals. A call whose category or code is not a constant fails the test.
func (m *module) codeUses(t *testing.T) []codeUse {
	t.Helper()
	var uses []codeUse
	dirs := make([]string, 0, len(m.pkgs))
	for dir := range m.pkgs {
		dirs = append(dirs, dir)
	}
	slices.Sort(dirs)
	for _, dir := range dirs {
		for _, f := range m.pkgs[dir].files {
			ast.Inspect(f, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.CallExpr:
					sel, ok := n.Fun.(*ast.SelectorExpr)
					if !ok || (sel.Sel.Name != "New" && sel.Sel.Name != "Newf") || !m.refersTo(f, dir, sel.X, "internal/errdefs") {
						return true
					}
					pos := m.fset.Position(n.Pos())
					if len(n.Args) < 2 {
						t.Errorf("%s: errdefs.%s with %d arguments", pos, sel.Sel.Name, len(n.Args))
						return true
					}
					status := 0
					if cat, ok := n.Args[0].(*ast.SelectorExpr); ok && m.refersTo(f, dir, cat.X, "internal/errdefs") {
						status = categoryStatus[cat.Sel.Name]
					}
					if status == 0 {
						t.Errorf("%s: the category of this error is not one of errdefs' sentinels", pos)
					}
					code, ok := m.constString(dir, f, n.Args[1])
					if !ok {
						t.Errorf("%s: the code of this error is not a constant (use an api.Code… constant, so that TestCodesInSource can check it)", pos)
						return true
					}
					uses = append(uses, codeUse{pos: pos, code: code, status: status})
				case *ast.CompositeLit:
					if !m.isAPIError(f, dir, n.Type) {
						return true
					}
					for _, el := range n.Elts {
						kv, ok := el.(*ast.KeyValueExpr)
						if id, isID := kv.Key.(*ast.Ident); !ok || !isID || id.Name != "Code" {
							continue
						}
						if code, ok := m.constString(dir, f, kv.Value); ok {
							uses = append(uses, codeUse{pos: m.fset.Position(kv.Pos()), code: code})
						}
					}
				}
				return true
			})
		}
	}
	return uses
}

// refersTo reports whether x is the name of the module package rel in f.
func (m *module) refersTo(f *ast.File, dir string, x ast.Expr, rel string) bool {
	id, ok := x.(*ast.Ident)
	if !ok {
		return false
	}
	got, ok := m.importDir(f, id.Name)
	return ok && got == rel && dir != rel
}

// isAPIError reports whether typ is this package's Error type.
func (m *module) isAPIError(f *ast.File, dir string, typ ast.Expr) bool {
	switch typ := typ.(type) {
	case *ast.Ident:
		return dir == "api" && typ.Name == "Error"
	case *ast.SelectorExpr:
		return typ.Sel.Name == "Error" && m.refersTo(f, dir, typ.X, "api")
	}
	return false
}
