package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
)

// extractTar unpacks a tar stream.
func (x *extractor) extractTar(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if errors.Is(err, tar.ErrInsecurePath) && hdr != nil {
			return errUnsafe("archive entry %q has an insecure path", hdr.Name)
		}
		if err != nil {
			return classify(nil, "reading the tar archive", err)
		}
		if err := x.entry(); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return err
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := x.mkdirs(name); err != nil {
				return err
			}
		case tar.TypeReg, '\x00', tar.TypeGNUSparse, tar.TypeCont:
			if name == "" {
				return errCorrupt("regular file entry without a name", nil)
			}
			if hdr.Size < 0 {
				return errCorrupt(fmt.Sprintf("entry %q has a negative size", name), nil)
			}
			if err := x.writeFile(name, hdr.Size, tr); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if name == "" {
				return errUnsafe("symlink replaces the image root")
			}
			if err := x.symlink(name, hdr.Linkname); err != nil {
				return err
			}
		case tar.TypeLink:
			if name == "" {
				return errUnsafe("hardlink replaces the image root")
			}
			if err := x.hardlink(name, hdr.Linkname); err != nil {
				return err
			}
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			return errUnsafe("archive entry %q is a device node or fifo", hdr.Name)
		default:
			return errUnsupported("archive entry %q has unsupported type %q", hdr.Name, hdr.Typeflag)
		}
	}
	return nil
}

// finish checks the finished tree: symlinks resolve inside, and disk images
