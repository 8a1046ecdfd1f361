// Package dashboard is goldvm's web page: one HTML page with its style
// sheet and script, embedded in the binary and served by the daemon at "/"
// (the page) and under Prefix (its files).
//
// The page and its files hold no data, so they are served without the
// bearer token: a browser that opens the daemon's address cannot send an
// Authorization header with that first request. Everything the page shows
// comes from the API (GET /vms, /images, /events, ...), whose every request
// the script sends with "Authorization: Bearer <token>"; on a 401 the page
// asks for the token and keeps it in the tab's sessionStorage. The token is
// never put in a URL, where access logs and the history would keep it.
package dashboard

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

// Prefix is the path under which the page's files are served.
const Prefix = "/dashboard/"

//go:embed assets
var embedded embed.FS

// files are the assets, by name ("index.html", "app.js", "style.css").
var files = func() fs.FS {
	sub, err := fs.Sub(embedded, "assets")
	if err != nil {
		panic(err)
	}
	return sub
}()

// csp lets the page load only its own script and style sheet, connect only
// to the daemon, and show images only from blobs it fetched (screenshots):
// the token in sessionStorage is worth stealing, so no inline script, no
// other origin.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"

// Public reports whether r asks for the page or one of its files (GET or
// HEAD of "/" or of Prefix+name of an embedded file): those need no token.
func Public(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	if r.URL.Path == "/" {
		return true
	}
	name, ok := strings.CutPrefix(r.URL.Path, Prefix)
	if !ok || name == "index.html" || !fs.ValidPath(name) {
		return false
	}
	st, err := fs.Stat(files, name)
	return err == nil && st.Mode().IsRegular()
}

// Handler serves the page at "/" and its files under Prefix; any other
// path is 404.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !Public(r) {
			http.NotFound(w, r)
			return
		}
		name := strings.TrimPrefix(r.URL.Path, Prefix)
		if r.URL.Path == "/" {
			name = "index.html"
		}
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		// The files change with the binary: always revalidate.
		h.Set("Cache-Control", "no-cache")
		http.ServeFileFS(w, r, files, name)
	})
}
