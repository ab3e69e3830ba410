//go:build !unix

package store

import (
	"context"
	"os"
)

// LockFile is a no-op where flock is not available; do not run two processes
// that change one keyset file at the same time there.
func LockFile(ctx context.Context, path string) (unlock func(), err error) {
	return func() {}, nil
}

// changeTime is not available here; the file's size and modification time
// tell versions apart.
func changeTime(os.FileInfo) int64 { return 0 }
