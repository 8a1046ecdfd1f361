// Package errdefs defines the error categories that goldvm's packages return
// and that the API maps, in one place, to HTTP status codes and stable codes.
//
// A package wraps one of the sentinels with context:
//
//	return errdefs.New(errdefs.ErrConflict, "vm-locked", "overlay is locked by another process", err)
//
// and the server turns it into {"code":"vm-locked","message":"…"} with 409.
package errdefs

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Category sentinels. Check with errors.Is.
var (
	// ErrInvalid means the caller sent something wrong (HTTP 400).
	ErrInvalid = errors.New("invalid")
	// ErrNotFound means the named thing does not exist (HTTP 404).
	ErrNotFound = errors.New("not found")
	// ErrConflict means the thing exists but is locked, busy or corrupt (HTTP 409).
	ErrConflict = errors.New("conflict")
	// ErrUnavailable means a dependency (image server, hypervisor) failed (HTTP 502/503).
	ErrUnavailable = errors.New("unavailable")
	// ErrUnsupportedMedia means the request body is not JSON (HTTP 415).
	ErrUnsupportedMedia = errors.New("unsupported media type")
)

// Error is an error with a stable API code and a message safe to show to the
// caller. Its cause is kept for logs and errors.Is/As.
type Error struct {
	// Category is one of the sentinels above.
	Category error
	// Code is the stable machine-readable code, e.g. "checksum-mismatch".
	Code string
	// Message is the human-readable explanation sent to the caller.
	Message string
	// Cause is the underlying error, if any.
	Cause error
}

// New returns an *Error. cause may be nil.
func New(category error, code, message string, cause error) *Error {
	return &Error{Category: category, Code: code, Message: message, Cause: cause}
}

// Newf is New with a formatted message and no cause.
func Newf(category error, code, format string, args ...any) *Error {
	return &Error{Category: category, Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return e.Message + ": " + e.Cause.Error()
	}
	return e.Message
}

// Unwrap returns both the category and the cause so errors.Is works on either.
func (e *Error) Unwrap() []error {
	var errs []error
	if e.Category != nil {
		errs = append(errs, e.Category)
	}
	if e.Cause != nil {
		errs = append(errs, e.Cause)
	}
	return errs
}

// CodeOf returns the stable code and public message of err: those of the
// outermost *Error in its chain, or "internal-error" for anything else.
func CodeOf(err error) (code, message string) {
	var e *Error
	if errors.As(err, &e) {
		return e.Code, e.Error()
	}
	return "internal-error", "internal error"
}

// Redactor hides host directories in messages meant for API clients: a
// message keeps its detail (a QEMU or file system error often names a
// file) but shows each directory by a name, e.g. "$GOLDVM_DATA_DIR/vms/…".
// The zero value and nil leave messages as they are.
type Redactor struct {
	r *strings.Replacer
}

// NewRedactor returns a Redactor that writes name in place of each dir
// (given as it appears in messages, absolute or not).
func NewRedactor(dirs map[string]string) *Redactor {
	type pair struct{ dir, name string }
	var ps []pair
	for dir, name := range dirs {
		if dir = strings.TrimSuffix(dir, "/"); dir != "" {
			ps = append(ps, pair{dir, name})
		}
	}
	// Longer directories first: a directory inside another one is shown
	// by its own name (the replacer tries its pairs in order).
	slices.SortFunc(ps, func(a, b pair) int { return len(b.dir) - len(a.dir) })
	var args []string
	for _, p := range ps {
		args = append(args, p.dir, p.name)
	}
	return &Redactor{r: strings.NewReplacer(args...)}
}

// Redact returns msg with the directories replaced by their names.
func (r *Redactor) Redact(msg string) string {
	if r == nil || r.r == nil {
		return msg
	}
	return r.r.Replace(msg)
}

// CodeOf is CodeOf with the message redacted.
func (r *Redactor) CodeOf(err error) (code, message string) {
	code, message = CodeOf(err)
	return code, r.Redact(message)
}
