package vm

import (
	"context"

	"github.com/goldvm/goldvm/api"
	"github.com/goldvm/goldvm/internal/records"
)

// Page returns the VMs q selects, newest first, and the id that continues
// the listing when more follow (see records.Page: the cost is that of the
// page, not of all records). While some record changes wait in memory for
// the store (see records.go) the indexes may not show them yet, so the
// page is then made from a scan of every record with the changes applied.
func (m *Manager) Page(ctx context.Context, q records.Query) ([]api.VM, string, error) {
	m.mu.Lock()
	pending := len(m.unsaved)
	m.mu.Unlock()
	var recs []*records.Record
	next := ""
	if pending == 0 {
		var err error
		if recs, next, err = m.cfg.Store.Page(q); err != nil {
			return nil, "", err
		}
	} else {
		all, err := m.list()
		if err != nil {
			return nil, "", err
		}
		for _, r := range all {
			if (q.After != "" && r.ID >= q.After) || !q.Match(r) {
				continue
			}
			if q.Limit > 0 && len(recs) == q.Limit {
				next = recs[len(recs)-1].ID
				break
			}
			recs = append(recs, r)
		}
	}
	out := make([]api.VM, 0, len(recs))
	for _, r := range recs {
		out = append(out, r.VM)
	}
	return out, next, nil
}
