package qemu

import (
	"context"
	"encoding/json"
	"fmt"
)

// imgInfo is the part of `qemu-img info --output=json` we read.
type imgInfo struct {
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
	// The backing file an overlay names, and its format.
	BackingFilename string `json:"backing-filename"`
	FullBacking     string `json:"full-backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
}

// qemuImgInfo runs qemu-img info on a disk of the given format (never
// probed). With force (-U) it works on images that a running QEMU holds
// locked.
func (d *Driver) qemuImgInfo(ctx context.Context, path, format string, force bool) (imgInfo, error) {
	args := []string{"info", "--output=json", "-f", format}
	if force {
		args = append(args, "-U")
	}
	args = append(args, path)
	out, err := d.run(ctx, d.cfg.QemuImg, args...)
	if err != nil {
		return imgInfo{}, err
	}
	var info imgInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return imgInfo{}, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return info, nil
}
