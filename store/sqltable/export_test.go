package sqltable

import "time"

// SetLockWait shortens LockSingle's wait in tests.
func SetLockWait(d time.Duration) (restore func()) {
	old := lockWait
	lockWait = d
	return func() { lockWait = old }
}

// Retryable exposes retryable to the tests.
var Retryable = retryable
