//go:build cgo

package pkcs11

// SetTestMechanism makes New check mech instead of the configured wrapping
// mechanism; it returns a function that restores the default.
func SetTestMechanism(mech uint) (restore func()) {
	testMechanism = mech
	return func() { testMechanism = 0 }
}

// MapCode maps a PKCS#11 return value as the provider of token and key
// label does for an operation.
func MapCode(token, keyLabel string, ckr uint, unwrapping bool) error {
	p := &Provider{token: token, cfg: Config{KeyLabel: keyLabel}}
	return p.mapErr("op", p11Error(ckr), unwrapping)
}

var (
	CompareID = compareID
	NextID    = nextID
)

// Wrap domains, for tests that recompute a wrap.
const (
	GCMDomain = gcmDomain
	KWPDomain = kwpDomain
)

// OpenModules returns the number of modules this package holds open.
func OpenModules() int {
	modules.Lock()
	defer modules.Unlock()
	return len(modules.m)
}

// PointCurrentAt makes p's cached handle of its current version name
// another object, as a module that reuses a destroyed object's handle would.
func PointCurrentAt(p *Provider, h uint) {
	p.keys.Load().current.h = p11ObjectHandle(h)
	p.keys.Load().current.checked.Store(0)
}
