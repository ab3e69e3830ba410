package core

import (
	"container/list"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Unwrapper opens wrapped keys; *Keyring implements it.
type Unwrapper interface {
	Unwrap(ctx context.Context, wk *WrappedKey, ec Context) (DEK, error)
}

// CacheOptions bound how long and how often one unwrapped DEK is reused.
type CacheOptions struct {
	// MaxAge is how long an unwrapped DEK stays usable after it was
	// unwrapped. Zero means 5 minutes.
	MaxAge time.Duration
	// MaxUses is how many calls of Use one unwrap serves. Zero means no
	// limit.
	MaxUses int
	// MaxEntries bounds the number of cached DEKs; the least recently used
	// is evicted first. Zero means 1024.
	MaxEntries int
	// Now returns the current time; nil means time.Now. For tests.
	Now func() time.Time
}

// CacheStats counts what a DEKCache did.
type CacheStats struct {
	// Hits is the number of Use calls served from the cache.
	Hits uint64
	// Loads is the number of calls to the underlying Unwrapper.
	Loads uint64
	// Evictions is the number of DEKs dropped (age, uses, size or Purge).
	Evictions uint64
}

// DEKCache caches unwrapped DEKs so that a service does not call its vault
// per request. Entries expire after MaxAge or MaxUses; concurrent misses for
// the same wrapped key and context are coalesced into one Unwrap call; key
// bytes are zeroed when an entry is evicted and no caller is using it.
//
// A DEK is only lent to the function given to Use, never returned, so the
// cache knows when it is safe to zero it. A DEKCache is safe for concurrent
// use.
type DEKCache struct {
	u    Unwrapper
	opts CacheOptions

	mu       sync.Mutex
	entries  map[[32]byte]*cacheEntry
	lru      *list.List // of *cacheEntry, most recent at front
	inflight map[[32]byte]*cacheLoad
	stats    CacheStats
}

type cacheEntry struct {
	key     [32]byte
	dek     DEK
	loaded  time.Time
	uses    int
	refs    int
	evicted bool
	elem    *list.Element
}

type cacheLoad struct {
	done chan struct{}
	err  error
}

// NewDEKCache returns a cache in front of u.
func NewDEKCache(u Unwrapper, opts CacheOptions) *DEKCache {
	if opts.MaxAge <= 0 {
		opts.MaxAge = 5 * time.Minute
	}
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = 1024
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &DEKCache{
		u:        u,
		opts:     opts,
		entries:  map[[32]byte]*cacheEntry{},
		lru:      list.New(),
		inflight: map[[32]byte]*cacheLoad{},
	}
}

func cacheKey(wk *WrappedKey, ec Context) ([32]byte, error) {
	bin, err := wk.MarshalBinary()
	if err != nil {
		return [32]byte{}, err
	}
	h := sha256.New()
	h.Write(bin)
	h.Write([]byte{0})
	h.Write(ec.Canonical())
	var k [32]byte
	h.Sum(k[:0])
	return k, nil
}

// Use calls fn with the DEK of wk opened with ec, unwrapping it on a miss.
// The DEK is lent for the duration of fn only: fn must not keep it or a
// slice of it. Use returns fn's error, or the unwrap error (which wraps the
// usual sentinels).
func (c *DEKCache) Use(ctx context.Context, wk *WrappedKey, ec Context, fn func(DEK) error) error {
	key, err := cacheKey(wk, ec)
	if err != nil {
		return err
	}
	e, err := c.acquire(ctx, key, wk, ec)
	if err != nil {
		return err
	}
	defer c.release(e)
	return fn(e.dek)
}

// acquire returns a live entry with a reference taken, loading it if needed.
func (c *DEKCache) acquire(ctx context.Context, key [32]byte, wk *WrappedKey, ec Context) (*cacheEntry, error) {
	for {
		c.mu.Lock()
		if e, ok := c.entries[key]; ok {
			if c.expiredLocked(e) {
				c.evictLocked(e)
			} else {
				c.stats.Hits++
				c.takeLocked(e)
				c.mu.Unlock()
				return e, nil
			}
		}
		if l, ok := c.inflight[key]; ok {
			c.mu.Unlock()
			select {
			case <-l.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if l.err != nil && !isContextErr(l.err) {
				return nil, l.err
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			continue // look again: the entry is there, or the leader gave up
		}
		l := &cacheLoad{done: make(chan struct{})}
		c.inflight[key] = l
		c.stats.Loads++
		c.mu.Unlock()

		dek, err := c.load(ctx, key, l, wk, ec)
		if err != nil {
			return nil, err
		}

		c.mu.Lock()
		delete(c.inflight, key)
		e := &cacheEntry{key: key, dek: dek, loaded: c.opts.Now()}
		e.elem = c.lru.PushFront(e)
		c.entries[key] = e
		for c.lru.Len() > c.opts.MaxEntries {
			c.evictLocked(c.lru.Back().Value.(*cacheEntry))
		}
		c.takeLocked(e)
		close(l.done)
		c.mu.Unlock()
		// Evict (and zero) the entry when it expires even if nobody asks
		// for it again, so plaintext DEKs do not linger in memory.
		time.AfterFunc(c.opts.MaxAge, func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.evictLocked(e)
		})
		return e, nil
	}
}

// load calls the Unwrapper for a miss. Whatever happens, even a panic in the
// Unwrapper, the in-flight marker is removed and waiters are released; on
// success the caller removes the marker, adds the entry and closes l.done
// under one lock.
func (c *DEKCache) load(ctx context.Context, key [32]byte, l *cacheLoad, wk *WrappedKey, ec Context) (dek DEK, err error) {
	ok := false
	defer func() {
		if ok {
			return
		}
		if r := recover(); r != nil {
			err = fmt.Errorf("DEK cache: unwrap panicked: %v", r)
			defer panic(r)
		}
		c.mu.Lock()
		delete(c.inflight, key)
		l.err = err
		close(l.done)
		c.mu.Unlock()
	}()
	dek, err = c.u.Unwrap(ctx, wk, ec)
	if err != nil {
		return nil, err
	}
	ok = true
	return dek, nil
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

func (c *DEKCache) expiredLocked(e *cacheEntry) bool {
	return c.opts.Now().Sub(e.loaded) >= c.opts.MaxAge ||
		(c.opts.MaxUses > 0 && e.uses >= c.opts.MaxUses)
}

// takeLocked counts one use and one reference; an entry that reaches
// MaxUses leaves the map at once so no later call can take it.
func (c *DEKCache) takeLocked(e *cacheEntry) {
	e.uses++
	e.refs++
	c.lru.MoveToFront(e.elem)
	if c.opts.MaxUses > 0 && e.uses >= c.opts.MaxUses {
		c.evictLocked(e)
	}
}

func (c *DEKCache) evictLocked(e *cacheEntry) {
	if e.evicted {
		return
	}
	e.evicted = true
	c.stats.Evictions++
	delete(c.entries, e.key)
	c.lru.Remove(e.elem)
	if e.refs == 0 {
		e.dek.Zero()
	}
}

func (c *DEKCache) release(e *cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.refs--
	if e.refs == 0 && e.evicted {
		e.dek.Zero()
	}
}

// Purge evicts every entry, zeroing each DEK as soon as no caller uses it.
func (c *DEKCache) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		c.evictLocked(e)
	}
}

// Len returns the number of cached DEKs.
func (c *DEKCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// Stats returns counters of the cache's activity.
func (c *DEKCache) Stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// String describes the cache without revealing keys.
func (c *DEKCache) String() string {
	s := c.Stats()
	return fmt.Sprintf("DEKCache(entries=%d hits=%d loads=%d evictions=%d)", c.Len(), s.Hits, s.Loads, s.Evictions)
}
