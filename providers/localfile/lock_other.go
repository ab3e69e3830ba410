//go:build !unix

package localfile

import (
	"context"
	"fmt"
	"os"

	"github.com/keyctl/keyctl/core"
)

// lockFile is not implemented on this platform: the key file cannot be
// changed safely, so mutations are refused. Wrap and unwrap work.
func lockFile(ctx context.Context, path string) (func(), error) {
	return nil, fmt.Errorf("lock file %s: file locking is not implemented on this platform: %w", path, core.ErrUnsupported)
}

// checkMode does nothing where Unix permission bits do not exist.
func checkMode(path string, fi os.FileInfo) error { return nil }

func syncDir(dir string) error { return nil }
