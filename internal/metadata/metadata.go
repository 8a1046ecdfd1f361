// Package metadata is goldvm's per-VM metadata service: what a guest reads
// at http://169.254.169.254/. Each VM is served on a listener of its own
// (the hypervisor driver steers the VM's traffic for 169.254.169.254 there,
// identified by the network device it arrives on, never by an address the
// guest could forge), so a handler knows its VM without looking at the
// request: there is nothing a guest can send to read another VM's data.
//
// It serves the paths cloud-init's EC2 and OpenStack datasources read, and
// /goldvm/v1/vm, the VM's own record. It has no route to the daemon's API
// and never sees its token.
package metadata

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/goldvm/goldvm/internal/hypervisor"
)

// RecordFunc returns the VM's record as the API shows it (for /goldvm/v1/vm).
type RecordFunc func(ctx context.Context, id string) (any, error)

// Service runs one HTTP server per VM. It is safe for concurrent use.
type Service struct {
	record RecordFunc
	log    *slog.Logger

	mu      sync.Mutex
	servers map[string]*http.Server
}

// New returns a service; record may be nil (then /goldvm/v1/vm is 404).
func New(record RecordFunc, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	return &Service{record: record, log: log, servers: map[string]*http.Server{}}
}

// Serve answers VM id's metadata on ln until Stop(id) or Close. A VM that
// is already served has its old listener closed first.
func (s *Service) Serve(id string, ci hypervisor.CloudInit, ln net.Listener) {
	srv := &http.Server{
		Handler:           Handler(id, ci, s.record),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.mu.Lock()
	old := s.servers[id]
	s.servers[id] = srv
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Warn("metadata service stopped", "vm", id, "err", err)
		}
	}()
}

// Serving reports whether VM id is being served.
func (s *Service) Serving(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.servers[id] != nil
}

// Stop stops serving VM id (nothing when it is not served).
func (s *Service) Stop(id string) {
	s.mu.Lock()
	srv := s.servers[id]
	delete(s.servers, id)
	s.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// Close stops serving every VM.
func (s *Service) Close() {
	s.mu.Lock()
	servers := s.servers
	s.servers = map[string]*http.Server{}
	s.mu.Unlock()
	for _, srv := range servers {
		srv.Close()
	}
}

// Handler answers one VM's metadata requests (GET and HEAD only).
func Handler(id string, ci hypervisor.CloudInit, record RecordFunc) http.Handler {
	keys := ci.SSHAuthorizedKeys
	ec2 := map[string]string{
		"instance-id":    ci.InstanceID,
		"local-hostname": ci.Hostname,
		"hostname":       ci.Hostname,
	}
	text := func(w http.ResponseWriter, s string) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte(s))
	}
	jsonDoc := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		b, _ := json.Marshal(v) // one line: the test guest prints it on its console
		w.Write(append(b, '\n'))
	}
	userData := func(w http.ResponseWriter) {
		if ci.UserData == "" {
			http.NotFound(w, nil)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write([]byte(ci.UserData))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			// Includes IMDSv2's PUT /latest/api/token: cloud-init then
			// reads the paths without a token.
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		path := r.URL.Path
		switch {
		case path == "/":
			text(w, "latest\n")
		case path == "/latest" || path == "/latest/":
			text(w, "meta-data/\nuser-data\n")
		case path == "/latest/meta-data" || path == "/latest/meta-data/":
			l := "hostname\ninstance-id\nlocal-hostname\n"
			if len(keys) > 0 {
				l += "public-keys/\n"
			}
			text(w, l)
		case strings.HasPrefix(path, "/latest/meta-data/public-keys"):
			ec2Keys(w, r, strings.TrimPrefix(path, "/latest/meta-data/public-keys"), keys)
		case strings.HasPrefix(path, "/latest/meta-data/") && ec2[strings.TrimPrefix(path, "/latest/meta-data/")] != "":
			text(w, ec2[strings.TrimPrefix(path, "/latest/meta-data/")])
		case path == "/latest/user-data", path == "/openstack/latest/user_data":
			userData(w)
		case path == "/openstack" || path == "/openstack/":
			text(w, "latest\n")
		case path == "/openstack/latest" || path == "/openstack/latest/":
			text(w, "meta_data.json\nuser_data\n")
		case path == "/openstack/latest/meta_data.json":
			pk := map[string]string{}
			for i, k := range keys {
				pk["key"+strconv.Itoa(i)] = k
			}
			jsonDoc(w, map[string]any{
				"uuid": ci.InstanceID, "name": ci.Hostname, "hostname": ci.Hostname,
				"public_keys": pk, "launch_index": 0, "availability_zone": "goldvm",
			})
		case path == "/goldvm/v1/vm":
			if record == nil {
				http.NotFound(w, r)
				return
			}
			v, err := record(r.Context(), id)
			if err != nil {
				http.Error(w, "the VM's record is not available", http.StatusServiceUnavailable)
				return
			}
			jsonDoc(w, v)
		default:
			http.NotFound(w, r)
		}
	})
}

// ec2Keys answers /latest/meta-data/public-keys[rest]: the list
// ("0=key0"), and "<n>/" and "<n>/openssh-key".
func ec2Keys(w http.ResponseWriter, r *http.Request, rest string, keys []string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	rest = strings.Trim(rest, "/")
	if rest == "" {
		var b strings.Builder
		for i := range keys {
			b.WriteString(strconv.Itoa(i) + "=key" + strconv.Itoa(i) + "\n")
		}
		w.Write([]byte(b.String()))
		return
	}
	n, sub, _ := strings.Cut(rest, "/")
	i, err := strconv.Atoi(n)
	if err != nil || i < 0 || i >= len(keys) || strconv.Itoa(i) != n {
		http.NotFound(w, r)
		return
	}
	switch sub {
	case "":
		w.Write([]byte("openssh-key\n"))
	case "openssh-key":
		w.Write([]byte(keys[i] + "\n"))
	default:
		http.NotFound(w, r)
	}
}
