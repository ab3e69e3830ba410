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

type kekChangeResult struct {
	Provider string `json:"provider"`
	KeyID    string `json:"key_id"`
	Version  string `json:"version"`
	State    string `json:"state"`
}

func (a *app) kekCommand() *cobra.Command {
	var provName string
	var yes, force bool

	list := &cobra.Command{
		Use:   "list",
		Short: "List the KEK versions of a local key file",
		Args:  cobra.NoArgs,
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
				a.emitJSON(res)
				return nil
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "VERSION\tSTATE\tCREATED\tCURRENT\n")
			for _, v := range res.Versions {
				cur := ""
				if v.Current {
					cur = "*"
				}
				created := v.Created
				if created == "" {
					created = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", oneLine(v.Version), v.State, created, cur)
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
				if state == localfile.StateDestroyed {
					if err := a.checkDestroy(provName, v, yes, force); err != nil {
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
					a.emitJSON(kekChangeResult{Provider: name, KeyID: lp.Ref().KeyID, Version: v, State: string(state)})
					return nil
				}
				a.printf("provider %q (%s): KEK version %s is %s\n", name, lp.Ref(), oneLine(v), state)
				return nil
			}),
		}
	}
	disable := change("disable VERSION", "Disable a KEK version: it stays in the file but no longer unwraps",
		`Disable a KEK version. Its key stays in the file, but unwrapping with it fails
until it is enabled again. The current version cannot be disabled.`,
		localfile.StateDisabled)
	enable := change("enable VERSION", "Enable a disabled KEK version again",
		`Enable a disabled KEK version again, so that it unwraps.`,
		localfile.StateEnabled)
	destroy := change("destroy VERSION --yes", "Destroy a KEK version's key for good (needs --yes)",
		`Remove the key of a KEK version from the key file, keeping only a tombstone.
This cannot be undone: every wrapped key whose only wrap is under this version
can no longer be unwrapped, and all data encrypted under those DEKs becomes
unreadable. Rewrap first ('keyctl rewrap', 'keyctl rewrap --keyset'), check
with 'keyctl inspect', then pass --yes. The current version cannot be
destroyed.`,
		localfile.StateDestroyed)
	destroy.Flags().BoolVar(&yes, "yes", false, "confirm that the version's key is to be destroyed")
	destroy.Flags().BoolVar(&force, "force-unreadable", false, "destroy even though DEKs of the configured keyset are wrapped only under this version (they become unreadable)")

	c := group("kek", "Manage the KEK versions of a local key file",
		`List, disable, enable and destroy the KEK versions of a localfile provider
(default: the keyring primary; --provider NAME for another).`,
		list, disable, enable, destroy)
	c.PersistentFlags().StringVar(&provName, "provider", "", "provider name in the configuration (default: the keyring primary)")
	return c
}

// checkDestroy refuses to destroy version v without --yes, and, even with
// --yes, while DEKs of the configured keyset are wrapped only under it,
// unless --force-unreadable says to go ahead anyway.
func (a *app) checkDestroy(provName, v string, yes, force bool) error {
	n, known := a.keysetDependents(provName, v)
	if yes && (force || !known || n == 0) {
		if force && n > 0 {
			fmt.Fprintf(a.stderr, "keyctl: warning: destroying KEK version %s makes %d DEK(s) of the configured keyset, and every value encrypted under them, unreadable\n", oneLine(v), n)
		}
		return nil
	}
	if yes {
		return withHint(usagef("refusing to destroy KEK version %s: %d DEK(s) of the configured keyset are wrapped only under it, and every value encrypted under them would become unreadable", oneLine(v), n),
			"rewrap first (keyctl rewrap --keyset), or pass --force-unreadable as well if that loss is intended")
	}
	msg := fmt.Sprintf("refusing to destroy KEK version %s without --yes: destroying it is permanent, and every wrapped key whose only wrap is under this version (with all data encrypted under those DEKs) becomes unreadable", oneLine(v))
	if known && n > 0 {
		msg += fmt.Sprintf("; %d DEK(s) of the configured keyset are wrapped only under it", n)
	}
	return withHint(usagef("%s", msg), "rewrap first (keyctl rewrap FILE..., keyctl rewrap --keyset), then run again with --yes")
}

// keysetDependents counts the keyset DEKs wrapped only under KEK version v of
// the provider, reading wrapped keys only (no key is used). ok is false when
// it cannot tell.
func (a *app) keysetDependents(provName, v string) (int, bool) {
	a.noPrompt = true // a refusal must not ask for a passphrase
	defer func() { a.noPrompt = false }()
	name, lp, _, err := a.versionAdmin(provName)
	if err != nil || name == "" {
		return 0, false
	}
	ks, _, err := a.loadKeyset()
	if err != nil {
		return 0, false
	}
	ref := lp.Ref()
	n := 0
	for _, e := range ks.DEKs {
		only := len(e.Wrapped.Stanzas) > 0
		for _, s := range e.Wrapped.Stanzas {
			if s.Ref() != ref || s.KeyVersion != v {
				only = false
			}
		}
		if only {
			n++
		}
	}
	return n, true
}
