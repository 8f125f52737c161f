//go:build !windows

package records

import "os"

// syncDir makes the creation, renaming and removal of files in dir
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
