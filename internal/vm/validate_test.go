package vm

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
)

func validReq() api.CreateVMRequest {
	return api.CreateVMRequest{
		CPUs: 2, Memory: 1024, NetworkType: "nat",
		Image: api.Image{URL: "http://127.0.0.1:8000/guest.tar.gz", Checksum: strings.Repeat("ab", 32), ChecksumType: "sha256"},
	}
}

func ptr[T any](v T) *T { return &v }

func TestValidate(t *testing.T) {
	tests := []struct {
		desc    string
		mutate  func(*api.CreateVMRequest)
		wantErr string
		check   func(t *testing.T, v Validated)
	}{
		{desc: "valid with defaults", mutate: func(*api.CreateVMRequest) {}, check: func(t *testing.T, v Validated) {
			if !v.Headless || v.ToolsInitTimeout != DefaultToolsInitTimeout || v.NetworkType != "nat" {
				t.Errorf("got %+v, want headless, default timeout, nat", v)
			}
		}},
		{desc: "network defaults to nat", mutate: func(r *api.CreateVMRequest) { r.NetworkType = "" }, check: func(t *testing.T, v Validated) {
			if v.NetworkType != "nat" {
				t.Errorf("network = %q, want nat", v.NetworkType)
			}
		}},
		{desc: "launch_gui inverts headless", mutate: func(r *api.CreateVMRequest) { r.LaunchGUI = ptr(true) }, check: func(t *testing.T, v Validated) {
			if v.Headless {
				t.Error("launch_gui=true gave headless")
			}
		}},
		{desc: "checksum is lower-cased", mutate: func(r *api.CreateVMRequest) {
			r.Image.Checksum = strings.Repeat("AB", 32)
			r.Image.ChecksumType = "SHA256"
		}, check: func(t *testing.T, v Validated) {
			if v.Image.Checksum != strings.Repeat("ab", 32) || v.Image.ChecksumType != "sha256" {
				t.Errorf("got %+v", v.Image)
			}
		}},
		{desc: "md5", mutate: func(r *api.CreateVMRequest) { r.Image.Checksum = strings.Repeat("0", 32); r.Image.ChecksumType = "md5" }},
		{desc: "sha1", mutate: func(r *api.CreateVMRequest) {
			r.Image.Checksum = strings.Repeat("0", 40)
			r.Image.ChecksumType = "sha1"
		}},
		{desc: "sha512", mutate: func(r *api.CreateVMRequest) {
			r.Image.Checksum = strings.Repeat("0", 128)
			r.Image.ChecksumType = "sha512"
		}},
		{desc: "timeout kept", mutate: func(r *api.CreateVMRequest) { r.ToolsInitTimeout = api.Duration(90 * time.Second) }, check: func(t *testing.T, v Validated) {
			if v.ToolsInitTimeout != 90*time.Second {
				t.Errorf("timeout = %v", v.ToolsInitTimeout)
			}
		}},
		{desc: "no cpus: the default", mutate: func(r *api.CreateVMRequest) { r.CPUs = 0 }, check: func(t *testing.T, v Validated) {
			if v.CPUs != 1 || v.Machine.CPUs() != 0 {
				t.Errorf("cpus %d, requested machine %+v; want 1 and no topology asked for", v.CPUs, v.Machine)
			}
		}},
		{desc: "negative cpus", mutate: func(r *api.CreateVMRequest) { r.CPUs = -1 }, wantErr: "cpus must be at least 1"},
		{desc: "too many cpus", mutate: func(r *api.CreateVMRequest) { r.CPUs = 65 }, wantErr: "more than this host allows (--max-cpus 64)"},
		{desc: "no memory: the default", mutate: func(r *api.CreateVMRequest) { r.Memory = 0 }, check: func(t *testing.T, v Validated) {
			if v.MemoryMiB != 1024 || v.Machine.MemoryMiB != 0 {
				t.Errorf("memory %d, requested %d; want 1024 and none asked for", v.MemoryMiB, v.Machine.MemoryMiB)
			}
		}},
		{desc: "cpus become a topology", mutate: func(r *api.CreateVMRequest) { r.CPUs = 4 }, check: func(t *testing.T, v Validated) {
			if m := v.Machine; m.Threads != 1 || m.Cores != 4 || m.Sockets != 1 || v.CPUs != 4 {
				t.Errorf("machine %+v", m)
			}
		}},
		{desc: "machine topology", mutate: func(r *api.CreateVMRequest) {
			r.CPUs = 0
			r.Machine = &api.Machine{Threads: 2, Cores: 2, Network: "e1000"}
		}, check: func(t *testing.T, v Validated) {
			if m := v.Machine; m.CPUs() != 4 || m.Sockets != 1 || m.Network != "e1000" || v.CPUs != 4 {
				t.Errorf("machine %+v, cpus %d", m, v.CPUs)
			}
		}},
		{desc: "machine and cpus disagree", mutate: func(r *api.CreateVMRequest) { r.Machine = &api.Machine{Cores: 3} }, wantErr: "disagree"},
		{desc: "machine and memory disagree", mutate: func(r *api.CreateVMRequest) { r.Machine = &api.Machine{MemoryMiB: 512} }, wantErr: "disagree"},
		{desc: "machine over the cpu limit", mutate: func(r *api.CreateVMRequest) { r.CPUs = 0; r.Machine = &api.Machine{Sockets: 2, Cores: 40} }, wantErr: "--max-cpus 64"},
		{desc: "machine bad nic", mutate: func(r *api.CreateVMRequest) { r.Machine = &api.Machine{Network: "ne2000"} }, wantErr: `machine.network "ne2000"`},
		{desc: "machine multicast mac", mutate: func(r *api.CreateVMRequest) { r.Machine = &api.Machine{MAC: "53:54:00:00:00:01"} }, wantErr: "machine.mac"},
		{desc: "cdrom without checksum", mutate: func(r *api.CreateVMRequest) {
			r.CDROMs = []api.Image{{URL: "http://127.0.0.1/x.iso", ChecksumType: "sha256"}}
		}, wantErr: "cdroms[0]: checksum must be 64 hex digits"},
		{desc: "three cdroms", mutate: func(r *api.CreateVMRequest) { r.CDROMs = make([]api.Image, 3) }, wantErr: "at most 2"},
		{desc: "kernel without url", mutate: func(r *api.CreateVMRequest) { r.Boot = &api.Boot{} }, wantErr: "boot.kernel: url is required"},
		{desc: "append with a newline", mutate: func(r *api.CreateVMRequest) {
			r.Boot = &api.Boot{Kernel: r.Image, Append: "a\nb"}
		}, wantErr: "boot.append"},
		{desc: "boot media", mutate: func(r *api.CreateVMRequest) {
			i := r.Image
			i.ChecksumType = "SHA256"
			r.Boot = &api.Boot{Kernel: r.Image, Initrd: &i, Append: "console=ttyS0"}
			r.CDROMs = []api.Image{r.Image}
		}, check: func(t *testing.T, v Validated) {
			if v.Boot == nil || v.Boot.Initrd.ChecksumType != "sha256" || len(v.CDROMs) != 1 {
				t.Errorf("boot %+v cdroms %+v", v.Boot, v.CDROMs)
			}
		}},
		{desc: "machine global mac", mutate: func(r *api.CreateVMRequest) { r.Machine = &api.Machine{MAC: "00:16:3e:00:00:01"} }, wantErr: "local unicast"},
		{desc: "machine mac in the derived block", mutate: func(r *api.CreateVMRequest) { r.Machine = &api.Machine{MAC: "52:54:00:12:34:56"} }, wantErr: `machine.mac "52:54:00:12:34:56" is in 52:54:00:00:00:00/24`},
		{desc: "image by key", mutate: func(r *api.CreateVMRequest) { r.Image = api.Image{Key: "SHA256-" + strings.Repeat("Ab", 32)} }, check: func(t *testing.T, v Validated) {
			if v.Image != (api.Image{Key: "sha256-" + strings.Repeat("ab", 32), Checksum: strings.Repeat("ab", 32), ChecksumType: "sha256"}) {
				t.Errorf("image %+v", v.Image)
			}
		}},
		{desc: "image key with a url", mutate: func(r *api.CreateVMRequest) { r.Image.Key = "sha256-" + strings.Repeat("0", 64) }, wantErr: "without image.url"},
		{desc: "image key malformed", mutate: func(r *api.CreateVMRequest) { r.Image = api.Image{Key: "sha256-00"} }, wantErr: `image.key "sha256-00"`},
		{desc: "image key disagrees with checksum", mutate: func(r *api.CreateVMRequest) {
			r.Image = api.Image{Key: "sha256-" + strings.Repeat("0", 64), Checksum: strings.Repeat("1", 64)}
		}, wantErr: "disagrees"},
		{desc: "empty disk", mutate: func(r *api.CreateVMRequest) {
			r.Image = api.Image{EmptyDisk: "20GiB"}
			r.CDROMs = []api.Image{{URL: "http://x/a.iso", Checksum: strings.Repeat("0", 64), ChecksumType: "sha256"}}
		}, check: func(t *testing.T, v Validated) {
			if v.Image != (api.Image{EmptyDisk: "20GiB"}) {
				t.Errorf("image %+v", v.Image)
			}
			if n, err := emptyDiskBytes(v.Image.EmptyDisk); n != 20<<30 || err != nil {
				t.Errorf("empty disk of %d bytes (%v)", n, err)
			}
		}},
		{desc: "empty disk malformed", mutate: func(r *api.CreateVMRequest) { r.Image = api.Image{EmptyDisk: "20gb"} }, wantErr: "image.empty_disk"},
		{desc: "empty disk too large", mutate: func(r *api.CreateVMRequest) { r.Image = api.Image{EmptyDisk: "65tib"} }, wantErr: "more than 64 TiB"},
		{desc: "tiny memory", mutate: func(r *api.CreateVMRequest) { r.Memory = 8 }, wantErr: "less than the minimum"},
		{desc: "bad network", mutate: func(r *api.CreateVMRequest) { r.NetworkType = "wifi" }, wantErr: "network_type"},
		{desc: "bad peers", mutate: func(r *api.CreateVMRequest) { r.Peers = "Team A" }, wantErr: `peers "Team A"`},
		{desc: "peers", mutate: func(r *api.CreateVMRequest) { r.Peers = "team-a" }, check: func(t *testing.T, v Validated) {
			if v.Peers != "team-a" {
				t.Errorf("peers %q, want team-a", v.Peers)
			}
		}},
		{desc: "no url", mutate: func(r *api.CreateVMRequest) { r.Image.URL = "" }, wantErr: "image.url is required"},
		{desc: "file url", mutate: func(r *api.CreateVMRequest) { r.Image.URL = "file:///etc/passwd" }, wantErr: "http or https"},
		{desc: "bad checksum type", mutate: func(r *api.CreateVMRequest) { r.Image.ChecksumType = "crc32" }, wantErr: "checksum_type"},
		{desc: "short checksum", mutate: func(r *api.CreateVMRequest) { r.Image.Checksum = "abcd" }, wantErr: "64 hex digits"},
		{desc: "path in checksum", mutate: func(r *api.CreateVMRequest) { r.Image.Checksum = "../../" + strings.Repeat("a", 58) }, wantErr: "hex digits"},
		{desc: "md5 length for sha256", mutate: func(r *api.CreateVMRequest) { r.Image.Checksum = strings.Repeat("a", 32) }, wantErr: "64 hex digits"},
		{desc: "contradiction", mutate: func(r *api.CreateVMRequest) { r.Headless = ptr(true); r.LaunchGUI = ptr(true) }, wantErr: "contradict"},
		{desc: "bad callback", mutate: func(r *api.CreateVMRequest) { r.CallbackURL = "ftp://x" }, wantErr: "callback_url"},
		{desc: "timeout not whole seconds", mutate: func(r *api.CreateVMRequest) { r.ToolsInitTimeout = api.Duration(1500 * time.Millisecond) }, wantErr: "not a whole number of seconds"},
		{desc: "timeout too short", mutate: func(r *api.CreateVMRequest) { r.ToolsInitTimeout = api.Duration(time.Millisecond) }, wantErr: "too short"},
		{desc: "timeout too long", mutate: func(r *api.CreateVMRequest) { r.ToolsInitTimeout = api.Duration(2 * time.Hour) }, wantErr: "more than the maximum"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			req := validReq()
			tt.mutate(&req)
			v, err := Validate(req, Limits{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want error containing %q", err, tt.wantErr)
				}
				if !errors.Is(err, errdefs.ErrInvalid) {
					t.Errorf("error %v is not ErrInvalid", err)
				}
				if code, _ := errdefs.CodeOf(err); code != "invalid-request" {
					t.Errorf("code = %q, want invalid-request", code)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tt.check != nil {
				tt.check(t, v)
			}
		})
	}
}

func TestValidateLimits(t *testing.T) {
	req := validReq()
	req.Memory = 4096
	if _, err := Validate(req, Limits{MaxMemoryMiB: 2048}); err == nil || !strings.Contains(err.Error(), "--max-memory 2048 MiB") {
		t.Fatalf("got %v, want a max memory error", err)
	}
	req.CPUs = 8
	req.Memory = 1024
	if _, err := Validate(req, Limits{MaxCPUs: 4}); err == nil || !strings.Contains(err.Error(), "--max-cpus 4") {
		t.Fatalf("8 cpus with MaxCPUs 4: %v", err)
	}
	// Missing values come from the limits: memory from DefaultMemoryMiB,
	// a topology of DefaultThreads threads.
	req = validReq()
	req.CPUs, req.Memory = 0, 0
	v, err := Validate(req, Limits{DefaultThreads: 2, DefaultMemoryMiB: 768})
	if err != nil || v.CPUs != 2 || v.MemoryMiB != 768 {
		t.Fatalf("defaults: %+v, %v; want 2 vCPUs (one core of 2 threads) and 768 MiB", v, err)
	}
	req.CPUs = 6
	if v, err = Validate(req, Limits{DefaultThreads: 2}); err != nil || v.Machine.Threads != 2 || v.Machine.Cores != 3 {
		t.Fatalf("6 cpus with 2 threads: %+v, %v", v.Machine, err)
	}
}
