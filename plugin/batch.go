package plugin

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/keyctl/keyctl/core"
	pb "github.com/keyctl/keyctl/plugin/proto"
)

// dispatchers is the number of RPCs the coalescing queue keeps in flight
// at once. While they are busy, new single calls queue up and leave
// together in the next RPC.
const dispatchers = 4

// bulkParallel is the number of batches a bulk call keeps in flight.
const bulkParallel = 2

func wrapItemSize(it *pb.WrapItem) int { return 64 + len(it.GetDek()) + contextSize(it.GetContext()) }

func unwrapItemSize(it *pb.UnwrapItem) int {
	s := it.GetStanza()
	return 64 + len(s.GetProvider()) + len(s.GetKeyId()) + len(s.GetKeyVersion()) + len(s.GetData()) + contextSize(it.GetContext())
}

func contextSize(ps []*pb.ContextPair) int {
	n := 0
	for _, p := range ps {
		n += 8 + len(p.GetKey()) + len(p.GetValue())
	}
	return n
}

// call is one single call waiting in a batcher.
type call[Req, Res any] struct {
	ctx  context.Context
	req  Req
	done chan struct{}

	mu        sync.Mutex
	res       Res
	err       error
	finished  bool
	abandoned bool
}

// batcher coalesces concurrent single calls into batched RPCs.
type batcher[Req, Res any] struct {
	c       *Client
	max     int
	size    func(Req) int
	send    func(ctx context.Context, items []Req) ([]Res, error)
	discard func(Res) // clears a result nobody will read (a DEK)
	queue   chan *call[Req, Res]
	quit    chan struct{}
	once    sync.Once
}

func newBatcher[Req, Res any](c *Client, max int, size func(Req) int, send func(context.Context, []Req) ([]Res, error), discard func(Res)) *batcher[Req, Res] {
	b := &batcher[Req, Res]{c: c, max: max, size: size, send: send, discard: discard,
		queue: make(chan *call[Req, Res], max), quit: make(chan struct{})}
	for range dispatchers {
		go b.loop()
	}
	return b
}

func (b *batcher[Req, Res]) stop() { b.once.Do(func() { close(b.quit) }) }

// do queues req and waits for its result or for ctx.
func (b *batcher[Req, Res]) do(ctx context.Context, req Req) (Res, error) {
	var zero Res
	cl := &call[Req, Res]{ctx: ctx, req: req, done: make(chan struct{})}
	select {
	case b.queue <- cl:
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-b.quit:
		return zero, fmt.Errorf("%s: client closed: %w", b.c.who(), core.ErrUnavailable)
	}
	var err error
	select {
	case <-cl.done:
		return cl.res, cl.err
	case <-ctx.Done():
		err = ctx.Err()
	case <-b.quit:
		// Closed while queued: no dispatcher may be left to take it.
		err = fmt.Errorf("%s: client closed: %w", b.c.who(), core.ErrUnavailable)
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.finished && ctx.Err() == nil {
		return cl.res, cl.err // finished just in time
	}
	cl.abandoned = true
	if cl.finished && b.discard != nil {
		b.discard(cl.res)
	}
	return zero, err
}

func (b *batcher[Req, Res]) loop() {
	for {
		var first *call[Req, Res]
		select {
		case first = <-b.queue:
		case <-b.quit:
			return
		}
		batch := []*call[Req, Res]{first}
		bytes := b.size(first.req)
	drain:
		for len(batch) < b.max && bytes < maxBatchBytes {
			select {
			case cl := <-b.queue:
				batch = append(batch, cl)
				bytes += b.size(cl.req)
			default:
				break drain
			}
		}
		b.run(batch)
	}
}

// run sends one batch. A batch of one carries its caller's context, so
// cancellation reaches the provider; a larger batch runs until the latest
// deadline among its callers (each caller still returns at its own).
func (b *batcher[Req, Res]) run(batch []*call[Req, Res]) {
	var ctx context.Context
	var cancel context.CancelFunc
	if len(batch) == 1 {
		ctx, cancel = context.WithCancel(batch[0].ctx)
	} else {
		var latest time.Time
		all := true
		for _, cl := range batch {
			d, ok := cl.ctx.Deadline()
			if !ok {
				all = false
				break
			}
			if d.After(latest) {
				latest = d
			}
		}
		if all {
			ctx, cancel = context.WithDeadline(context.Background(), latest)
		} else {
			ctx, cancel = context.WithCancel(context.Background())
		}
	}
	defer cancel()
	reqs := make([]Req, len(batch))
	for i, cl := range batch {
		reqs[i] = cl.req
	}
	res, err := b.send(ctx, reqs)
	for i, cl := range batch {
		cl.mu.Lock()
		cl.finished = true
		if err != nil {
			cl.err = err
		} else {
			cl.res = res[i]
			if cl.abandoned && b.discard != nil {
				b.discard(cl.res)
			}
		}
		cl.mu.Unlock()
		close(cl.done)
	}
}

// bulk sends items in batches of at most max items and about
// maxBatchBytes, bulkParallel at a time, and reports each item's result
// (or its batch's error) through set.
func bulk[Req, Res any](ctx context.Context, max int, size func(Req) int, items []Req, send func(context.Context, []Req) ([]Res, error), set func(i int, r Res, err error)) {
	type chunk struct{ lo, hi int }
	var chunks []chunk
	lo, bytes := 0, 0
	for i, it := range items {
		n := size(it)
		if i > lo && (i-lo >= max || bytes+n > maxBatchBytes) {
			chunks = append(chunks, chunk{lo, i})
			lo, bytes = i, 0
		}
		bytes += n
	}
	if lo < len(items) {
		chunks = append(chunks, chunk{lo, len(items)})
	}
	work := make(chan chunk)
	var wg sync.WaitGroup
	for range min(bulkParallel, len(chunks)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ch := range work {
				var res []Res
				err := ctx.Err()
				if err == nil {
					res, err = send(ctx, items[ch.lo:ch.hi])
				}
				for i := ch.lo; i < ch.hi; i++ {
					if err != nil {
						var zero Res
						set(i, zero, err)
					} else {
						set(i, res[i-ch.lo], nil)
					}
				}
			}
		}()
	}
	for _, ch := range chunks {
		work <- ch
	}
	close(work)
	wg.Wait()
}
