package core_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyctl/keyctl/core"
)

// slowUnwrapper counts calls and can block them until released.
type slowUnwrapper struct {
	ring  *core.Keyring
	calls atomic.Int64
	gate  chan struct{} // if non-nil, each call waits for it to close
	fail  error
	lent  []core.DEK // every DEK it returned, to check zeroing
	mu    sync.Mutex
}

func (u *slowUnwrapper) Unwrap(ctx context.Context, wk *core.WrappedKey, ec core.Context) (core.DEK, error) {
	u.calls.Add(1)
	if u.gate != nil {
		select {
		case <-u.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if u.fail != nil {
		return nil, u.fail
	}
	d, err := u.ring.Unwrap(ctx, wk, ec)
	if err == nil {
		u.mu.Lock()
		u.lent = append(u.lent, d)
		u.mu.Unlock()
	}
	return d, err
}

func cacheFixture(t *testing.T) (*slowUnwrapper, core.DEK, *core.WrappedKey) {
	t.Helper()
	ring, _ := core.NewKeyring(newMem("a"))
	dek, wk, err := ring.GenerateDEK(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return &slowUnwrapper{ring: ring}, dek, wk
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func TestCacheCoalescesConcurrentMisses(t *testing.T) {
	u, dek, wk := cacheFixture(t)
	u.gate = make(chan struct{})
	c := core.NewDEKCache(u, core.CacheOptions{})
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.Use(context.Background(), wk, nil, func(d core.DEK) error {
				if !d.Equal(dek) {
					return errors.New("wrong DEK")
				}
				return nil
			})
		}()
	}
	// Let every goroutine reach the cache before the one load completes.
	for c.Stats().Loads == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	close(u.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := u.calls.Load(); got != 1 {
		t.Fatalf("%d concurrent misses made %d unwrap calls, want 1", n, got)
	}
}

func TestCacheMaxAge(t *testing.T) {
	u, _, wk := cacheFixture(t)
	now := time.Unix(1000, 0)
	c := core.NewDEKCache(u, core.CacheOptions{MaxAge: time.Minute, Now: func() time.Time { return now }})
	use := func() {
		if err := c.Use(context.Background(), wk, nil, func(core.DEK) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	use()
	use()
	if u.calls.Load() != 1 {
		t.Fatalf("calls = %d, want 1", u.calls.Load())
	}
	now = now.Add(59 * time.Second)
	use()
	if u.calls.Load() != 1 {
		t.Fatal("reloaded before MaxAge")
	}
	now = now.Add(time.Second)
	use()
	if u.calls.Load() != 2 {
		t.Fatalf("calls = %d after MaxAge, want 2", u.calls.Load())
	}
	if !isZero(u.lent[0]) {
		t.Fatal("expired DEK was not zeroed")
	}
	if isZero(u.lent[1]) {
		t.Fatal("live DEK was zeroed")
	}
}

func TestCacheMaxUses(t *testing.T) {
	u, _, wk := cacheFixture(t)
	c := core.NewDEKCache(u, core.CacheOptions{MaxUses: 3})
	for range 7 {
		if err := c.Use(context.Background(), wk, nil, func(core.DEK) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	// Uses 1-3, 4-6, 7: three loads.
	if got := u.calls.Load(); got != 3 {
		t.Fatalf("calls = %d, want 3", got)
	}
	if !isZero(u.lent[0]) || !isZero(u.lent[1]) {
		t.Fatal("used-up DEKs were not zeroed")
	}
}

func TestCacheZeroesOnlyAfterLastUser(t *testing.T) {
	u, dek, wk := cacheFixture(t)
	c := core.NewDEKCache(u, core.CacheOptions{})
	err := c.Use(context.Background(), wk, nil, func(d core.DEK) error {
		c.Purge()
		if !d.Equal(dek) {
			return errors.New("DEK zeroed while lent")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !isZero(u.lent[0]) {
		t.Fatal("purged DEK not zeroed after its user returned")
	}
	if c.Len() != 0 {
		t.Fatal("Purge left entries")
	}
}

func TestCacheLRUBound(t *testing.T) {
	ring, _ := core.NewKeyring(newMem("a"))
	u := &slowUnwrapper{ring: ring}
	c := core.NewDEKCache(u, core.CacheOptions{MaxEntries: 2})
	var wks []*core.WrappedKey
	for range 3 {
		_, wk, _ := ring.GenerateDEK(context.Background(), nil)
		wks = append(wks, wk)
	}
	nop := func(core.DEK) error { return nil }
	for _, wk := range wks {
		_ = c.Use(context.Background(), wk, nil, nop)
	}
	if c.Len() != 2 {
		t.Fatalf("Len = %d, want 2", c.Len())
	}
	if !isZero(u.lent[0]) {
		t.Fatal("evicted least-recently-used DEK not zeroed")
	}
	_ = c.Use(context.Background(), wks[2], nil, nop)
	if u.calls.Load() != 3 {
		t.Fatal("most recent entry was evicted")
	}
}

func TestCacheContextIsPartOfKey(t *testing.T) {
	u, _, _ := cacheFixture(t)
	ec := core.Context{"row": "1"}
	_, wk, _ := u.ring.GenerateDEK(context.Background(), ec)
	c := core.NewDEKCache(u, core.CacheOptions{})
	nop := func(core.DEK) error { return nil }
	if err := c.Use(context.Background(), wk, ec, nop); err != nil {
		t.Fatal(err)
	}
	// A cached DEK must not be served to a caller with the wrong context.
	if err := c.Use(context.Background(), wk, core.Context{"row": "2"}, nop); !errors.Is(err, core.ErrUnwrapFailed) {
		t.Fatalf("wrong context served from cache: %v", err)
	}
}

func TestCacheErrorsNotCached(t *testing.T) {
	u, _, wk := cacheFixture(t)
	u.fail = core.ErrUnavailable
	c := core.NewDEKCache(u, core.CacheOptions{})
	nop := func(core.DEK) error { return nil }
	for range 2 {
		if err := c.Use(context.Background(), wk, nil, nop); !errors.Is(err, core.ErrUnavailable) {
			t.Fatalf("err = %v", err)
		}
	}
	if u.calls.Load() != 2 {
		t.Fatal("a failed unwrap was cached")
	}
	u.fail = nil
	if err := c.Use(context.Background(), wk, nil, nop); err != nil {
		t.Fatal(err)
	}
}

func TestCacheLeaderCancelledWaiterRetries(t *testing.T) {
	u, _, wk := cacheFixture(t)
	u.gate = make(chan struct{})
	c := core.NewDEKCache(u, core.CacheOptions{})
	leaderCtx, cancel := context.WithCancel(context.Background())
	leaderErr := make(chan error, 1)
	go func() {
		leaderErr <- c.Use(leaderCtx, wk, nil, func(core.DEK) error { return nil })
	}()
	for c.Stats().Loads == 0 {
		time.Sleep(time.Millisecond)
	}
	waiterErr := make(chan error, 1)
	go func() {
		waiterErr <- c.Use(context.Background(), wk, nil, func(core.DEK) error { return nil })
	}()
	time.Sleep(10 * time.Millisecond)
	cancel()
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader: %v", err)
	}
	close(u.gate)
	if err := <-waiterErr; err != nil {
		t.Fatalf("waiter inherited the leader's cancellation: %v", err)
	}
}

// TestCacheEvictsIdleEntries: an expired DEK is zeroed even if nobody asks
// for it again.
func TestCacheEvictsIdleEntries(t *testing.T) {
	u, _, wk := cacheFixture(t)
	c := core.NewDEKCache(u, core.CacheOptions{MaxAge: 20 * time.Millisecond})
	if err := c.Use(context.Background(), wk, nil, func(core.DEK) error { return nil }); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.Len() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle entry never evicted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !isZero(u.lent[0]) {
		t.Fatal("idle expired DEK not zeroed")
	}
}

type panicker struct{ calls atomic.Int64 }

func (p *panicker) Unwrap(context.Context, *core.WrappedKey, core.Context) (core.DEK, error) {
	if p.calls.Add(1) == 1 {
		panic("provider bug")
	}
	return core.NewDEK()
}

// TestCachePanicDoesNotWedge: a panicking Unwrapper propagates to its caller
// and does not leave the key stuck for later callers.
func TestCachePanicDoesNotWedge(t *testing.T) {
	_, _, wk := cacheFixture(t)
	p := &panicker{}
	c := core.NewDEKCache(p, core.CacheOptions{})
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("panic swallowed")
			}
		}()
		_ = c.Use(context.Background(), wk, nil, func(core.DEK) error { return nil })
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Use(ctx, wk, nil, func(core.DEK) error { return nil }); err != nil {
		t.Fatalf("second call after a panic: %v", err)
	}
}
