package server

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/http"
	"time"

	"github.com/goldvm/goldvm/api"
)

// captureTimeout bounds one capture (a stop, the flatten, the package's
// checksum).
const captureTimeout = 30 * time.Minute

// captureVM answers POST /vms/{id}/capture: it writes a new gold image from
// the VM's disk and machine definition and answers 201 with the image (as
// GET /images/{key}) and its Location once it is published: synchronously,
// as POST /images/{key}/templates, since the work is a local copy and the
// image is usable by POST /vms the moment the reply is sent. The body is
// optional: {"stop": true} stops a running VM first. A client that gives
// up does not stop it.
func (s *Server) captureVM(w http.ResponseWriter, r *http.Request) {
	var req api.CaptureRequest
	// The body is optional: an empty one (of any type) is {}.
	// The body is optional: an empty one, of any type, is {}.
	body := bufio.NewReader(r.Body)
	if _, err := body.Peek(1); err != io.EOF {
		r.Body = struct {
			io.Reader
			io.Closer
		}{body, r.Body}
		if err := decodeJSON(w, r, &req); err != nil {
			s.writeError(w, err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), captureTimeout)
	defer cancel()
	g, err := s.vms.Capture(ctx, r.PathValue("id"), req.Stop)
	if err != nil {
		s.writeError(w, err)
		return
	}
	i, err := s.images.Info(g.Key)
	if err != nil {
		s.writeError(w, err)
		return
	}
	w.Header().Set("Location", "/images/"+g.Key)
	writeJSON(w, http.StatusCreated, imageInfo(i, s.vms.ImageUsage()[g.Key]))
}

// imagePackage answers GET /images/{key}/package: the image as a tar.zst
// package (machine.json and the disk), streamed as it is made, the same
// bytes on every request. Its sha256 is in the X-Checksum-Sha256 header
// (hex) and in Digest (RFC 3230, base64), so that another goldvm can fetch
// it by URL and checksum; it is computed at the first request of an image
// that was not captured here. Should the bytes sent not match that
// checksum, the reply is cut off rather than ended.
func (s *Server) imagePackage(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	sum, err := s.images.PackageSHA256(r.Context(), key)
	if err != nil {
		s.writeError(w, err)
		return
	}
	raw, _ := hex.DecodeString(sum)
	h := w.Header()
	h.Set("Content-Type", "application/zstd")
	h.Set("Content-Disposition", `attachment; filename="`+key+`.tar.zst"`)
	h.Set(api.PackageChecksumHeader, sum)
	h.Set("Digest", "sha-256="+base64.StdEncoding.EncodeToString(raw))
	h.Set("ETag", `"sha256-`+sum+`"`)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if err := s.images.WritePackage(r.Context(), key, sum, w); err != nil {
		if r.Context().Err() == nil {
			s.log.Error("image package", "key", key, "err", err)
		}
		// The status line is sent: cut the reply off, so that the client
		// sees a broken transfer rather than a complete package.
		panic(http.ErrAbortHandler)
	}
}
