package zipstream

import (
	"errors"
	"fmt"
)

// Kinds of *Error, for errors.Is.
var (
	// ErrCorrupt means the archive is damaged, truncated, or inconsistent
	// (its central directory disagrees with its entries).
	ErrCorrupt = errors.New("corrupt zip archive")
	// ErrUnsupported means the archive uses a feature this reader does not
	// implement: encryption, a compression method other than store and
	// deflate, several disks.
	ErrUnsupported = errors.New("unsupported zip archive")
	// ErrNeedsSpool means the archive cannot be read as a stream (a stored
	// entry whose size is only in its data descriptor or the central
	// directory, so the end of its data cannot be found): the caller reads
	// it by its central directory once it has all of it.
	ErrNeedsSpool = errors.New("zip archive cannot be read as a stream")
)

// Error is a problem with the archive itself. A failure of the source
// reader is never an *Error: it is returned wrapped, so that a failed
// download is told apart from a bad archive.
type Error struct {
	// Kind is ErrCorrupt, ErrUnsupported or ErrNeedsSpool.
	Kind error
	// Msg says what is wrong and where (entry name, offset).
	Msg string
	// Err is the underlying cause, or nil: io.ErrUnexpectedEOF for a
	// truncated archive, the inflater's error for bad deflate data.
	Err error
}

// Error returns the message, followed by the cause if there is one.
func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

// Unwrap returns the kind and the cause, so that errors.Is matches
// either.
func (e *Error) Unwrap() []error {
	if e.Err != nil {
		return []error{e.Kind, e.Err}
	}
	return []error{e.Kind}
}

func corrupt(msg string, cause error) error {
	return &Error{Kind: ErrCorrupt, Msg: msg, Err: cause}
}

func corruptf(format string, args ...any) error {
	return &Error{Kind: ErrCorrupt, Msg: fmt.Sprintf(format, args...)}
}

func unsupportedf(format string, args ...any) error {
	return &Error{Kind: ErrUnsupported, Msg: fmt.Sprintf(format, args...)}
}

func needsSpoolf(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...) + ": the archive cannot be read as a stream"
	return &Error{Kind: ErrNeedsSpool, Msg: msg}
}
