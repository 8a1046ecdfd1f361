package image

import (
	"testing"

	"github.com/goldvm/goldvm/internal/diskfmt/diskfmttest"
	"github.com/goldvm/goldvm/internal/errdefs"
)

// Every disk of the hostile table is refused by the store's first filter,
// whichever backend publishes it, and nothing is published.
func TestHostileDisksRefused(t *testing.T) {
	for _, c := range diskfmttest.Hostile("/srv/goldvm-test/target") {
		t.Run(c.Name, func(t *testing.T) {
			var entries []entry
			for _, f := range c.Files {
				entries = append(entries, entry{name: f.Name, body: f.Data})
			}
			data := buildTar(t, entries)
			srv := newServer(t, data)
			s := newStore(t, testOptions())
			_, err := ensure(t, s, specFor(srv.URL+"/x.tar", data))
			wantCode(t, err, CodeUnsafeDisk, errdefs.ErrInvalid)
			wantEmpty(t, s)
		})
	}
}
