package diskfmttest

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
)

func writeFile(path string, data []byte) error {
	return os.WriteFile(path, data, 0o644)
}

// WriteTo writes the case's files into dir.
func (c Case) WriteTo(dir string) error {
	for _, f := range c.Files {
		p := filepath.Join(dir, filepath.FromSlash(f.Name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := writeFile(p, f.Data); err != nil {
			return err
		}
	}
	return nil
}

// Tar returns the case's files as a tar archive.
func (c Case) Tar() ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range c.Files {
		if err := tw.WriteHeader(&tar.Header{Name: f.Name, Mode: 0o644, Size: int64(len(f.Data)), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
