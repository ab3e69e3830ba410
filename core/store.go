package core

import (
	"bytes"
	"context"
	"errors"
)

// ErrConflict is returned by a [KeysetStore] compare-and-swap when the stored
// value is no longer the one the caller read: another writer changed it
// first. Read again and retry, or skip.
var ErrConflict = errors.New("changed concurrently")

// KeysetStore is where a keyring's keyset lives: a file, a SQLite database, a
// PostgreSQL table. Implementations are in package store; core imports no
// database driver. Every method is safe for concurrent use, also by several
// processes sharing the same file or database.
//
// Errors: a stored keyset that does not pass the checks of [ParseKeyset]
// gives an error wrapping ErrMalformed (never a partial keyset, never a
// panic); an unknown DEK id wraps ErrKeyNotFound; a lost compare-and-swap
// wraps ErrConflict; a store busy past its lock timeout wraps ErrUnavailable.
type KeysetStore interface {
	// Load returns the stored keyset, validated. A store that holds nothing
	// yet returns an empty keyset (NewKeyset), not an error.
	Load(ctx context.Context) (*Keyset, error)

	// Update applies fn to the current keyset under the store's exclusive
	// lock (a flock, a database transaction) and stores the result
	// atomically if fn returns nil and the result validates. If fn returns an
	// error nothing is stored and Update returns that error. Two Updates
	// never lose each other's changes: the second sees the first's result.
	Update(ctx context.Context, fn func(ks *Keyset) error) error

	// Entries returns up to limit entries with id greater than after, in
	// ascending id order: the pages of a resumable bulk pass (after = the
	// last id of the previous page; start with 0). An empty result means the
	// end.
	Entries(ctx context.Context, after uint32, limit int) ([]KeysetEntry, error)

	// SwapWrapped replaces the wrapped key of DEK id with next, only if the
	// stored one is still equal to prev (same binary form). Otherwise it
	// changes nothing and returns an error wrapping ErrConflict. next must
	// be valid. This is the per-DEK step of a bulk rewrap: it does not
	// rewrite the rest of the keyset (in a SQL store it is one row).
	SwapWrapped(ctx context.Context, id uint32, prev, next *WrappedKey) error

	// SwapAll applies many SwapWrapped in one transaction (one lock, one
	// write, one fsync): a bulk rewrap's batch. Each swap succeeds or fails
	// on its own exactly as SwapWrapped would, and results[i] is swap i's
	// outcome (nil, or an error wrapping ErrConflict, ErrKeyNotFound or
	// ErrMalformed). A non-nil err means the store failed and none of the
	// swaps was stored.
	SwapAll(ctx context.Context, swaps []WrappedSwap) (results []error, err error)

	// Close releases the store's resources (database handles).
	Close() error
}

// WrappedSwap is one compare-and-swap of [KeysetStore.SwapAll]: DEK ID's
// wrapped key becomes Next if it is still Prev.
type WrappedSwap struct {
	ID         uint32
	Prev, Next *WrappedKey
}

// SameWrappedKey reports whether a and b have the same binary form.
func SameWrappedKey(a, b *WrappedKey) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, err1 := a.MarshalBinary()
	y, err2 := b.MarshalBinary()
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}
