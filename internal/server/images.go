package server

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/vm"
)

// prefetches tracks POST /images fetches still running or failed, so that
// GET /images can show them next to the published images.
type prefetches struct {
	mu    sync.Mutex
	state map[string]api.ImageInfo
}

func (p *prefetches) set(info api.ImageInfo) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		p.state = map[string]api.ImageInfo{}
	}
	p.state[info.Key] = info
}

// update changes the record of key, if there is one.
func (p *prefetches) update(key string, f func(*api.ImageInfo)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if info, ok := p.state[key]; ok {
		f(&info)
		p.state[key] = info
	}
}

// get returns the record of key.
func (p *prefetches) get(key string) (api.ImageInfo, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	info, ok := p.state[key]
	return info, ok
}

func (p *prefetches) remove(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.state, key)
}

func (p *prefetches) list() []api.ImageInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]api.ImageInfo, 0, len(p.state))
	for _, v := range p.state {
		out = append(out, v)
	}
	return out
}

func imageInfo(i image.ImageInfo, users int) api.ImageInfo {
	info := api.ImageInfo{
		Key: i.Key, URL: i.URL, ChecksumType: i.ChecksumType, Checksum: i.Checksum,
		SizeBytes: i.DiskBytes, VMs: users, State: "ready", CreatedAt: i.Created, LastUsed: i.LastUsed,
	}
	if i.Damaged != "" {
		// Kept for the VMs that depend on it (see image.Options.InUse).
		info.State = "damaged"
		info.Error = &api.Error{Code: image.CodeDamaged, Message: i.Damaged}
	}
	return info
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) {
	infos, err := s.images.List()
	if err != nil {
		s.writeError(w, err)
		return
	}
	out := api.ImageList{Images: []api.ImageInfo{}}
	ready := map[string]bool{}
	users := s.vms.ImageUsage() // one pass over the records, not one per image
	for _, i := range infos {
		ready[i.Key] = true
		out.Images = append(out.Images, imageInfo(i, users[i.Key]))
	}
	for _, p := range s.prefetch.list() {
		if !ready[p.Key] {
			out.Images = append(out.Images, p)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// getImage answers one image: published, being pre-fetched (with its
// phase and progress) or failed to pre-fetch; else 404 image-not-found.
func (s *Server) getImage(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	i, err := s.images.Info(key)
	if err == nil {
		writeJSON(w, http.StatusOK, imageInfo(i, s.vms.ImageUsage()[key]))
		return
	}
	if info, ok := s.prefetch.get(key); ok && errors.Is(err, errdefs.ErrNotFound) {
		writeJSON(w, http.StatusOK, info)
		return
	}
	s.writeError(w, err)
}

// prefetchImage starts fetching an image before any VM needs it. It answers
// 200 with the image when it is already there, else 202 and fetches in the
// background; GET /images shows the fetch as "fetching", then "ready" (or
// "error" with the reason).
func (s *Server) prefetchImage(w http.ResponseWriter, r *http.Request) {
	var img api.Image
	if err := decodeJSON(w, r, &img); err != nil {
		s.writeError(w, err)
		return
	}
	img, err := vm.ValidateImage(img)
	if err != nil {
		s.writeError(w, err)
		return
	}
	spec := image.Spec{URL: img.URL, Checksum: img.Checksum, ChecksumType: img.ChecksumType}
	key, err := image.Key(spec)
	if err != nil {
		s.writeError(w, err)
		return
	}
	if g, err := s.images.Get(key); err == nil {
		writeJSON(w, http.StatusOK, api.ImageInfo{Key: g.Key, URL: g.Spec.URL, ChecksumType: img.ChecksumType, Checksum: img.Checksum, SizeBytes: g.Size, State: "ready"})
		return
	}
	info := api.ImageInfo{Key: key, URL: img.URL, ChecksumType: img.ChecksumType, Checksum: img.Checksum, State: "fetching", CreatedAt: time.Now().UTC()}
	s.prefetch.set(info)
	go func() {
		_, err := s.images.Ensure(context.Background(), spec, func(p image.Progress) {
			s.prefetch.update(key, func(i *api.ImageInfo) {
				i.Phase, i.Progress = api.Phase(p.Phase), &api.Progress{BytesDone: p.BytesDone, BytesTotal: p.BytesTotal}
			})
		})
		if err != nil {
			code, msg := s.redact.CodeOf(err)
			s.prefetch.update(key, func(i *api.ImageInfo) {
				i.State, i.Phase, i.Progress, i.Error = "error", "", nil, &api.Error{Code: code, Message: msg}
			})
			s.log.Error("prefetch failed", "key", key, "err", err)
			return
		}
		s.prefetch.remove(key)
	}()
	w.Header().Set("Location", "/images/"+key)
	writeJSON(w, http.StatusAccepted, info)
}

// deleteImage removes a published image no VM uses, and forgets a failed
// pre-fetch of that key (which alone also answers 204).
func (s *Server) deleteImage(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	_, tracked := s.prefetch.get(key)
	s.prefetch.remove(key)
	if err := s.images.Delete(key, s.vms.ImageUsers); err != nil && !(tracked && errors.Is(err, errdefs.ErrNotFound)) {
		s.writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
