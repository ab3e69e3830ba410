//go:build unix

package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/keyctl/keyctl/core"
)

// lockTimeout is how long a writer waits for another one.
const lockTimeout = 30 * time.Second

// LockFile takes an exclusive flock on path+".lock", so that two processes
// changing one keyset file cannot lose each other's changes (FileStore takes
// it for every change; keyctl takes it around its own read-change-write of
// the keyset file, so both exclude each other). It waits up to
// lockTimeout, or until ctx ends. flock locks belong to the open file, so two
// FileStores in one process exclude each other too.
func LockFile(ctx context.Context, path string) (unlock func(), err error) {
	lp := path + ".lock"
	f, err := os.OpenFile(lp, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keyset lock %s: %w", lp, err)
	}
	deadline := time.Now().Add(lockTimeout)
	delay := time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				_ = f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("keyset lock %s: %w", lp, err)
		}
		if time.Now().After(deadline) {
			_ = f.Close()
			return nil, fmt.Errorf("keyset lock %s: still held by another writer after %v: %w", lp, lockTimeout, core.ErrUnavailable)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("keyset lock %s: %w", lp, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 20*time.Millisecond)
	}
}

// changeTime returns fi's inode change time in nanoseconds (0 if unknown).
func changeTime(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ctim.Sec*1e9 + st.Ctim.Nsec
	}
	return 0
}
