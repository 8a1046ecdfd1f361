//go:build !unix

package image

import "io/fs"

// allocated returns the bytes fi occupies on disk; without block counts it
// is the logical size.
func allocated(fi fs.FileInfo) int64 { return fi.Size() }
