//go:build unix

package localfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/keyctl/keyctl/core"
)

// lockFile takes an exclusive flock on the file at path, creating it with
// mode 0600 if needed, and returns the function that releases it. It waits
// while another process holds the lock, until ctx is done.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock file %s: %w", path, osError(err))
	}
	delay := time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock file %s: %w", path, osError(err))
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			err := ctx.Err()
			if errors.Is(err, context.DeadlineExceeded) {
				return nil, fmt.Errorf("lock file %s: still held by another process: %w: %w", path, err, core.ErrUnavailable)
			}
			return nil, fmt.Errorf("lock file %s: %w", path, err)
		case <-t.C:
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// checkMode refuses a key file that group or others may read, write or
// execute.
func checkMode(path string, fi os.FileInfo) error {
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return fmt.Errorf("localfile: key file %s has mode %04o: it is open to group or others; fix with: chmod 600 %s: %w", path, m, path, core.ErrPermission)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
