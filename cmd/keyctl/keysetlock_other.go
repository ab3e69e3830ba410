//go:build !unix

package main

import "context"

// lockKeysetFile is a no-op where flock is not available; do not run two
// keyctl processes that change one keyset file at the same time there.
func lockKeysetFile(ctx context.Context, path string) (unlock func(), err error) {
	return func() {}, nil
}
