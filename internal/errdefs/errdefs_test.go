package errdefs

import (
	"errors"
	"fmt"
	"testing"
)

func TestRedactor(t *testing.T) {
	r := NewRedactor(map[string]string{
		"/var/lib/goldvm":         "$DATA",
		"/var/lib/goldvm/images/": "$IMAGES",
		"":                        "$NOTHING",
	})
	cause := fmt.Errorf("writing /var/lib/goldvm/images/k/files/disk.qcow2: %w", errors.New("no space left on device"))
	err := New(ErrUnavailable, "disk-full", "no space left for the image", cause)
	for _, tt := range []struct {
		r        *Redactor
		in, want string
	}{
		{r, "open /var/lib/goldvm/vms/vm-1/disk.qcow2: locked", "open $DATA/vms/vm-1/disk.qcow2: locked"},
		{r, "gold /var/lib/goldvm/images/k/files/d and /var/lib/goldvm/vms/x", "gold $IMAGES/k/files/d and $DATA/vms/x"},
		{r, "nothing to hide in /var/lib/other", "nothing to hide in /var/lib/other"},
		{nil, "open /var/lib/goldvm/x", "open /var/lib/goldvm/x"},
	} {
		if got := tt.r.Redact(tt.in); got != tt.want {
			t.Errorf("Redact(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	code, msg := r.CodeOf(err)
	if code != "disk-full" || msg != "no space left for the image: writing $IMAGES/k/files/disk.qcow2: no space left on device" {
		t.Errorf("CodeOf = %q, %q", code, msg)
	}
	if code, msg := r.CodeOf(errors.New("plain /var/lib/goldvm")); code != "internal-error" || msg != "internal error" {
		t.Errorf("CodeOf(untyped) = %q, %q", code, msg)
	}
}
