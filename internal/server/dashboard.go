package server

import "github.com/goldvm/goldvm/internal/dashboard"

// dashboardRoutes are the routes of the web page (internal/dashboard): the
// page at "/" and its files. They are not JSON API, so api/openapi.yaml
// leaves them out (TestOpenAPI says so), and they need no token
// (dashboard.Public): the page holds no data and asks for the token
// itself, and a browser opening the daemon's address cannot send one.
var dashboardRoutes = []string{"GET /{$}", "GET " + dashboard.Prefix + "{file}"}

func (s *Server) addDashboard() {
	h := dashboard.Handler()
	for _, p := range dashboardRoutes {
		s.mux.Handle(p, h)
	}
}
