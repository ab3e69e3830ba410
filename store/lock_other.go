//go:build !unix

package store

import "context"

// LockFile is a no-op where flock is not available; do not run two processes
// that change one keyset file at the same time there.
func LockFile(ctx context.Context, path string) (unlock func(), err error) {
	return func() {}, nil
}
