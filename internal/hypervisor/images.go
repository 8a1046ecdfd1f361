package hypervisor

import "context"

// ImageForgetter is implemented by drivers that keep a copy of a gold
// image of their own outside the data dir (LXD imports it into its image
// store). The daemon calls it when goldvm deletes or evicts the image.
type ImageForgetter interface {
	// ForgetImage removes the driver's copy of the gold image key, unless
	// a machine still uses it. No copy is no error.
	ForgetImage(ctx context.Context, key string) error
}
