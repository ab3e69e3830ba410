package main

import (
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/plugin"
	"github.com/keyctl/keyctl/providers/localfile"
)

type rotateResult struct {
	Provider string `json:"provider"`
	Type     string `json:"type"`
	KeyID    string `json:"key_id"`
	Previous string `json:"previous_version"`
	Version  string `json:"version"`
}

// providerFlagName returns the provider to act on: --provider, else the
// keyring primary.
func (a *app) providerFlagName(name string) (string, error) {
	if name != "" {
		return name, nil
	}
	cfg, err := a.config()
	if err != nil {
		return "", err
	}
	return cfg.Keyring.Primary, nil
}

func (a *app) rotateCommand() *cobra.Command {
	var provName string
	c := &cobra.Command{
		Use:   "rotate [--provider NAME]",
		Short: "Create a new KEK version and make it current",
		Long: `Create a new version of a provider's KEK (default: the keyring primary) and
make it the version that wraps new DEKs. Older versions keep unwrapping until
they are disabled or destroyed ('keyctl kek'). Run 'keyctl rewrap' afterwards
to move existing wrapped keys onto the new version; their DEKs do not change.`,
		Example: `  keyctl rotate && keyctl rewrap --keyset`,
		Args:    cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			name, err := a.providerFlagName(provName)
			if err != nil {
				return err
			}
			p, err := a.provider(name)
			if err != nil {
				return err
			}
			rot, ok := p.(core.KeyRotator)
			if !ok {
				return fmt.Errorf("provider %q (%s): rotate: %w", name, p.Ref(), core.ErrUnsupported)
			}
			prev, err := p.CurrentVersion(a.ctx)
			if err != nil {
				return fmt.Errorf("provider %q: %w", name, err)
			}
			v, err := rot.RotateKey(a.ctx)
			if err != nil {
				return fmt.Errorf("provider %q: rotate: %w", name, err)
			}
			ref := p.Ref()
			if a.jsonOut {
				a.emitJSON(rotateResult{Provider: name, Type: ref.Provider, KeyID: ref.KeyID, Previous: prev, Version: v})
				return nil
			}
			a.printf("provider %q (%s): KEK version %s is now current (was %s)\n", name, ref, v, prev)
			return nil
		}),
	}
	c.Flags().StringVar(&provName, "provider", "", "provider name in the configuration (default: the keyring primary)")
	return c
}

// versionAdmin starts a provider by name for the kek subcommands, which
// need it to manage its KEK versions (plugin.VersionAdmin; the localfile
// provider does).
func (a *app) versionAdmin(provName string) (string, core.KeyProvider, plugin.VersionAdmin, error) {
	name, err := a.providerFlagName(provName)
	if err != nil {
		return "", nil, nil, err
	}
	p, err := a.provider(name)
	if err != nil {
		return "", nil, nil, err
	}
	va, ok := p.(plugin.VersionAdmin)
	if !ok {
		return "", nil, nil, fmt.Errorf("provider %q (%s): KEK versions are managed in its own vault: %w", name, p.Ref(), core.ErrUnsupported)
	}
	return name, p, va, nil
}

type kekVersion struct {
	Version string `json:"version"`
	State   string `json:"state"`
	Created string `json:"created"` // RFC 3339, or "" when the vault records none
	Current bool   `json:"current"`
}

type kekListResult struct {
	Provider string       `json:"provider"`
	KeyID    string       `json:"key_id"`
	KeyFile  string       `json:"key_file"`
	Versions []kekVersion `json:"versions"`
}

// kekChangeResult is the output of kek disable, enable and destroy. The
// Unreadable and LostWraps fields are set only when --force-unreadable let
// a change go ahead that makes DEKs of the keyset unreadable or takes one of
// their wraps.
type kekChangeResult struct {
	Provider      string   `json:"provider"`
	KeyID         string   `json:"key_id"`
	Version       string   `json:"version"`
	State         string   `json:"state"`
	Unreadable    int      `json:"unreadable,omitempty"`
	UnreadableIDs []string `json:"unreadable_ids,omitempty"`
	LostWraps     int      `json:"lost_wraps,omitempty"`
}

func (a *app) kekCommand() *cobra.Command {
	var provName string
	var yes, force bool

	list := &cobra.Command{
		Use:   "list",
		Short: "List the KEK versions of a local key file",
		Long: `List the versions of a provider's KEK: state, creation time, which one is
current, and how many DEKs of the configured keyset store are wrapped under
each (DEKS; '?' when the keyset store cannot be read). See 'keyctl kek usage'
for the details of every KEK version the keyset store names.`,
		Args: cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			name, p, va, err := a.versionAdmin(provName)
			if err != nil {
				return err
			}
			loc, vs, err := va.Versions(a.ctx)
			if err != nil {
				return fmt.Errorf("provider %q: %w", name, err)
			}
			res := kekListResult{Provider: name, KeyID: p.Ref().KeyID, KeyFile: loc, Versions: []kekVersion{}}
			for _, v := range vs {
				created := "" // unknown: PKCS#11 records no creation time
				if !v.Created.IsZero() {
					created = v.Created.UTC().Format(time.RFC3339)
				}
				res.Versions = append(res.Versions, kekVersion{Version: v.Version, State: string(v.State), Created: created, Current: v.Current})
			}
			if a.jsonOut {
				// The per-version DEK counts are in `kek usage --json`;
				// this object keeps its shape.
				a.emitJSON(res)
				return nil
			}
			ref := p.Ref()
			deks := map[string]int{}
			usage, uerr := a.kekUsage(&ref)
			if uerr != nil {
				fmt.Fprintf(a.stderr, "keyctl: warning: cannot count the DEKs under each version: %s\n", oneLine(uerr.Error()))
			}
			for _, u := range usage.Versions {
				deks[u.Version] = u.DEKs
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "VERSION\tSTATE\tCREATED\tCURRENT\tDEKS\n")
			for _, v := range res.Versions {
				cur := ""
				if v.Current {
					cur = "*"
				}
				created := v.Created
				if created == "" {
					created = "-"
				}
				n := "?"
				if uerr == nil {
					n = fmt.Sprint(deks[v.Version])
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", oneLine(v.Version), v.State, created, cur, n)
			}
			return tw.Flush()
		}),
	}

	change := func(use, short, long string, state localfile.VersionState) *cobra.Command {
		return &cobra.Command{
			Use:   use,
			Short: short,
			Long:  long,
			Args:  cobra.ExactArgs(1),
			RunE: action(func(cmd *cobra.Command, args []string) error {
				v := args[0]
				var dep kekDependents
				if state != localfile.StateEnabled {
					var err error
					if dep, err = a.checkRetire(provName, v, state, yes, force); err != nil {
						return err
					}
				}
				name, lp, va, err := a.versionAdmin(provName)
				if err != nil {
					return err
				}
				if err := va.SetVersionState(a.ctx, v, string(state)); err != nil {
					err = fmt.Errorf("provider %q: %w", name, err)
					if errors.Is(err, core.ErrFailedPrecondition) {
						return withHint(err, "run `keyctl rotate` first so that another version becomes current")
					}
					return err
				}
				if a.jsonOut {
					res := kekChangeResult{Provider: name, KeyID: lp.Ref().KeyID, Version: v, State: string(state),
						Unreadable: dep.Only, LostWraps: dep.Shared}
					for _, id := range dep.OnlyIDs {
						res.UnreadableIDs = append(res.UnreadableIDs, fmt.Sprintf("%08x", id))
					}
					a.emitJSON(res)
					return nil
				}
				a.printf("provider %q (%s): KEK version %s is %s\n", name, lp.Ref(), oneLine(v), state)
				return nil
			}),
		}
	}
	disable := change("disable VERSION", "Disable a KEK version: it stays in the file but no longer unwraps",
		`Disable a KEK version. Its key stays in the file, but unwrapping with it fails
until it is enabled again. The current version cannot be disabled.

While a DEK of the configured keyset store is wrapped only under this version
(see 'keyctl kek usage'), disable refuses: rewrap first ('keyctl rewrap
--keyset'), or pass --force-unreadable to make those DEKs unreadable until the
version is enabled again. Wrapped keys kept outside the keyset store are not
checked.`,
		localfile.StateDisabled)
	enable := change("enable VERSION", "Enable a disabled KEK version again",
		`Enable a disabled KEK version again, so that it unwraps.`,
		localfile.StateEnabled)
	destroy := change("destroy VERSION --yes", "Destroy a KEK version's key for good (needs --yes)",
		`Remove the key of a KEK version from the key file, keeping only a tombstone.
This cannot be undone: every wrapped key whose only wrap is under this version
can no longer be unwrapped, and all data encrypted under those DEKs becomes
unreadable. Rewrap first ('keyctl rewrap', 'keyctl rewrap --keyset'), check
with 'keyctl kek usage' and 'keyctl inspect', then pass --yes. The current
version cannot be destroyed.

While a DEK of the configured keyset store is wrapped only under this version,
or when the keyset store cannot be read, destroy refuses even with --yes,
unless --force-unreadable is given as well. Wrapped keys kept outside the
keyset store are not checked.`,
		localfile.StateDestroyed)
	destroy.Flags().BoolVar(&yes, "yes", false, "confirm that the version's key is to be destroyed")
	for _, c := range []*cobra.Command{disable, destroy} {
		c.Flags().BoolVar(&force, "force-unreadable", false, "go ahead even though DEKs of the configured keyset store are wrapped only under this version, or the store cannot be read (they become unreadable; their ids are printed)")
	}

	c := group("kek", "Manage the KEK versions of a local key file",
		`List, disable, enable and destroy the KEK versions of a localfile provider
(default: the keyring primary; --provider NAME for another), and show which
KEK versions the DEKs of the configured keyset store still need (usage).`,
		list, a.usageCommand(&provName), disable, enable, destroy)
	c.PersistentFlags().StringVar(&provName, "provider", "", "provider name in the configuration (default: the keyring primary; for usage: every KEK)")
	return c
}

// checkRetire decides whether KEK version v may be disabled or destroyed
// (state), from what the DEKs of the configured keyset store need of it
// (read from their wrapped keys; no key is used). It refuses, with exit 2:
//
//   - destroy without --yes (naming the count when it can tell);
//   - while any DEK has no readable wrap but under v, unless force;
//   - when the keyset store cannot be read, unless force (not knowing is
//     a reason to refuse).
//
// When force lets a change go ahead that makes DEKs unreadable, it says so
// on stderr with their count and first ids. DEKs that keep another readable
// wrap do not block; their count is printed. A version the provider does
// not list, or the current one, is left to the provider to refuse.
func (a *app) checkRetire(provName, v string, state localfile.VersionState, yes, force bool) (kekDependents, error) {
	verb, doing := "disable", "disabling"
	if state == localfile.StateDestroyed {
		verb, doing = "destroy", "destroying"
	}
	dep, scanErr, err := a.retireDependents(provName, v, state, yes)
	known := err == nil && scanErr == nil
	if state == localfile.StateDestroyed && !yes {
		msg := fmt.Sprintf("refusing to destroy KEK version %s without --yes: destroying it is permanent, and every wrapped key whose only wrap is under this version (with all data encrypted under those DEKs) becomes unreadable", oneLine(v))
		if known && dep.Only > 0 {
			msg += fmt.Sprintf("; %d DEK(s) of the configured keyset are wrapped only under it", dep.Only)
		}
		return dep, withHint(usagef("%s", msg), "rewrap first (keyctl rewrap FILE..., keyctl rewrap --keyset), then run again with --yes")
	}
	if errors.Is(err, errLeaveToProvider) {
		return kekDependents{}, nil
	}
	if err != nil {
		return dep, err
	}
	if scanErr != nil {
		err := scanErr
		if !force {
			return dep, withHint(fmt.Errorf("refusing to %s KEK version %s: cannot tell which DEKs of the configured keyset depend on it: %w", verb, oneLine(v), err),
				"make the keyset store readable and run again, or pass --force-unreadable if losing its DEKs is acceptable")
		}
		fmt.Fprintf(a.stderr, "keyctl: warning: going ahead (--force-unreadable) without knowing which DEKs of the configured keyset depend on KEK version %s: %s\n", oneLine(v), oneLine(err.Error()))
		return kekDependents{}, nil
	}
	loss := "become unreadable"
	if state == localfile.StateDisabled {
		loss = "become unreadable until it is enabled again"
	}
	if dep.Only > 0 && !force {
		msg := fmt.Sprintf("refusing to %s KEK version %s: %d DEK(s) of the configured keyset are wrapped only under it (%s) and would %s, with every value encrypted under them", verb, oneLine(v), dep.Only, idList(dep.OnlyIDs, dep.Only), loss)
		if dep.Shared > 0 {
			msg += fmt.Sprintf("; %d more would lose one of several wraps", dep.Shared)
		}
		return dep, withHint(usagef("%s", msg),
			"rewrap first (keyctl rewrap --keyset moves every DEK onto the current version; keyctl kek usage shows what is left), or pass --force-unreadable if that loss is intended")
	}
	if dep.Only > 0 {
		fmt.Fprintf(a.stderr, "keyctl: warning: %s KEK version %s (--force-unreadable): %d DEK(s) of keyset %s, and every value encrypted under them, %s: %s\n",
			doing, oneLine(v), dep.Only, dep.Keyset, loss, idList(dep.OnlyIDs, dep.Only))
	}
	if dep.Shared > 0 {
		fmt.Fprintf(a.stderr, "keyctl: note: %d DEK(s) of keyset %s lose their wrap under KEK version %s and stay readable through another wrap\n", dep.Shared, dep.Keyset, oneLine(v))
	}
	return dep, nil
}

// errLeaveToProvider means that checkRetire has nothing to check: the
// provider does not list the version, it is the current one, or it is
// already in the requested state; SetVersionState gives the answer.
var errLeaveToProvider = errors.New("left to the provider")

// retireDependents counts what retiring version v of the provider's KEK
// would do to the DEKs of the configured keyset store. err is the
// provider's failure (or errLeaveToProvider), scanErr the keyset store's.
// For a destroy without --yes (which is refused anyway) no passphrase is
// prompted for.
func (a *app) retireDependents(provName, v string, state localfile.VersionState, yes bool) (dep kekDependents, scanErr, err error) {
	if state == localfile.StateDestroyed && !yes {
		a.noPrompt = true // a refusal must not ask for a passphrase
		defer func() { a.noPrompt = false }()
	}
	name, p, va, err := a.versionAdmin(provName)
	if err != nil {
		return dep, nil, err
	}
	_, vs, err := va.Versions(a.ctx)
	if err != nil {
		return dep, nil, fmt.Errorf("provider %q: %w", name, err)
	}
	ref := p.Ref()
	dead := map[string]bool{}
	found := false
	for _, x := range vs {
		if x.Version == v {
			found = true
			if x.Current || x.State == string(state) {
				return dep, nil, errLeaveToProvider
			}
			continue
		}
		if x.State == string(localfile.StateDisabled) || x.State == string(localfile.StateDestroyed) {
			dead[core.StanzaLabel(core.Stanza{Provider: ref.Provider, KeyID: ref.KeyID, KeyVersion: x.Version})] = true
		}
	}
	if !found {
		return dep, nil, errLeaveToProvider
	}
	dep, scanErr = a.dependents(ref, v, dead)
	return dep, scanErr, nil
}
