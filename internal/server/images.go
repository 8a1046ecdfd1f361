package server

import (
	"context"
	"errors"
	"net/http"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
	"github.com/goldvm/goldvm/internal/image"
	"github.com/goldvm/goldvm/internal/vm"
)

// prefetchInfo shows a pre-fetch under way or failed as GET /images does.
func (s *Server) prefetchInfo(p image.PrefetchInfo) api.ImageInfo {
	info := api.ImageInfo{Key: p.Key, URL: p.Spec.URL, ChecksumType: p.Spec.ChecksumType, Checksum: p.Spec.Checksum,
		State: p.State, CreatedAt: p.Started}
	if pr := p.Progress; pr != nil {
		info.Phase, info.Progress = api.Phase(pr.Phase), &api.Progress{BytesDone: pr.BytesDone, BytesTotal: pr.BytesTotal}
	}
	if p.Err != nil {
		code, msg := s.redact.CodeOf(p.Err)
		info.Error = &api.Error{Code: code, Message: clipMessage(msg)}
	}
	return info
}

func imageInfo(i image.ImageInfo, users int) api.ImageInfo {
	info := api.ImageInfo{
		Key: i.Key, URL: i.URL, ChecksumType: i.ChecksumType, Checksum: i.Checksum,
		SizeBytes: i.DiskBytes, VMs: users, State: "ready", CreatedAt: i.Created, LastUsed: i.LastUsed, GuestOS: i.GuestOS,
		Parent: i.Parent, PackageSHA256: i.PackageSHA256,
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
	for _, p := range s.prefetch.List() {
		if !ready[p.Key] {
			out.Images = append(out.Images, s.prefetchInfo(p))
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
	if p, ok := s.prefetch.Get(key); ok && errors.Is(err, errdefs.ErrNotFound) {
		writeJSON(w, http.StatusOK, s.prefetchInfo(p))
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
	p, err := s.prefetch.Start(spec)
	if err != nil {
		s.writeError(w, err)
		return
	}
	w.Header().Set("Location", "/images/"+key)
	writeJSON(w, http.StatusAccepted, s.prefetchInfo(p))
}

// deleteImage removes a published image no VM uses. It also ends a
// pre-fetch of that key (which alone also answers 204): a failed one is
// forgotten, one under way is cancelled and its partial download removed
// (409 image-in-use instead while a VM waits for that image).
func (s *Server) deleteImage(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	// A delete, once begun, finishes even if the client goes away.
	ctx := context.WithoutCancel(r.Context())
	tracked, err := s.prefetch.Cancel(ctx, key, s.vms.ImageUsers)
	if err != nil {
		s.writeError(w, err)
		return
	}
	if err := s.images.Delete(key, s.vms.ImageUsers); err != nil && !(tracked && errors.Is(err, errdefs.ErrNotFound)) {
		s.writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
