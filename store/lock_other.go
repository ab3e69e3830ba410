//go:build !unix

package store

import "context"

// lockFile is a no-op where flock is not available; do not run two processes
// that change one keyset file at the same time there.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	return func() {}, nil
}
