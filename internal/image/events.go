package image

import (
	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/errdefs"
)

// Results of an Ensure's lookup, for Counters.Lookup.
const (
	LookupHit    = "hit"    // the image was in the store
	LookupMiss   = "miss"   // a fetch was started
	LookupJoined = "joined" // a fetch under way was joined
)

// Counters receives the store's counts for metrics. Its methods are called
// from fetches and must be quick and safe for concurrent use.
type Counters interface {
	// Lookup counts one Ensure by result (LookupHit, LookupMiss,
	// LookupJoined).
	Lookup(result string)
	// Downloaded counts n image bytes received from the network.
	Downloaded(n int64)
}

func (s *Store) count(result string) {
	if s.opts.Counters != nil {
		s.opts.Counters.Lookup(result)
	}
}

// announce sends an image event to Options.Events. g (may be nil) is the
// published image, err a fetch's failure.
func (s *Store) announce(action, key string, spec Spec, g *Gold, err error) {
	if s.opts.Events == nil {
		return
	}
	info := &api.ImageInfo{Key: key, URL: displayURL(spec.URL), Checksum: spec.Checksum, ChecksumType: spec.ChecksumType}
	if spec.URL == "" {
		info.URL = ""
	}
	e := api.Event{Type: api.EventImage, Action: action, ImageKey: key, Image: info}
	switch action {
	case api.ActionFetching:
		info.State = "fetching"
	case api.ActionReady:
		info.State = "ready"
		info.SizeBytes = g.Size
	case api.ActionError:
		info.State = "error"
		code, msg := errdefs.CodeOf(err)
		info.Error = &api.Error{Code: code, Message: msg}
		e.Message = msg
	}
	s.opts.Events.Publish(e)
}
