//go:build cgo

package pkcs11

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"

	p11 "github.com/miekg/pkcs11"

	"github.com/keyctl/keyctl/core"
)

// module is one loaded PKCS#11 library, shared by every Provider of the
// process that names the same path. C_Initialize runs when the first of them
// opens it and C_Finalize when the last one closes, so a library is
// initialised once per process however many providers use it.
type module struct {
	path  string
	ctx   *p11.Ctx
	refs  int
	owned bool // this package called C_Initialize (and so will finalise)
}

var modules = struct {
	sync.Mutex
	m map[string]*module
}{m: map[string]*module{}}

// openModule loads and initialises the module at path, or returns the one
// already open.
func openModule(path string) (*module, error) {
	key := filepath.Clean(path)
	if abs, err := filepath.Abs(key); err == nil {
		key = abs
	}
	if r, err := filepath.EvalSymlinks(key); err == nil {
		key = r
	}
	modules.Lock()
	defer modules.Unlock()
	if m := modules.m[key]; m != nil {
		m.refs++
		return m, nil
	}
	ctx := p11.New(key)
	if ctx == nil {
		return nil, fmt.Errorf("pkcs11: cannot load module %s (is the library installed? for SoftHSM2: apt-get install softhsm2): %w", path, core.ErrUnavailable)
	}
	owned := true
	if err := ctx.Initialize(); err != nil {
		if !isCode(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			ctx.Destroy()
			return nil, fmt.Errorf("pkcs11: module %s: C_Initialize: %v: %w", path, err, core.ErrUnavailable)
		}
		// Someone else in this process initialised it; leave finalising
		// to them.
		owned = false
	}
	m := &module{path: key, ctx: ctx, refs: 1, owned: owned}
	modules.m[key] = m
	return m, nil
}

// release drops one reference; the last one finalises and unloads the
// module.
func (m *module) release() {
	modules.Lock()
	defer modules.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(modules.m, m.path)
	if m.owned {
		_ = m.ctx.Finalize()
	}
	m.ctx.Destroy()
}

// code returns the PKCS#11 return value inside err, or 0 (CKR_OK) if err is
// not a PKCS#11 error.
func code(err error) uint {
	var e p11.Error
	if errors.As(err, &e) {
		return uint(e)
	}
	return p11.CKR_OK
}

func isCode(err error, c uint) bool { return err != nil && code(err) == c }

func p11Error(c uint) error { return p11.Error(c) }

func p11ObjectHandle(h uint) p11.ObjectHandle { return p11.ObjectHandle(h) }
