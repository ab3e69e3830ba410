package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/keyctl/keyctl/core"
)

type keysetDEK struct {
	ID      string     `json:"id"`
	State   string     `json:"state"`
	Created string     `json:"created"`
	Wraps   []wrapInfo `json:"wraps"`
}

type keysetListResult struct {
	File string      `json:"file"`
	DEKs []keysetDEK `json:"deks"`
}

type keysetRotateResult struct {
	File     string `json:"file"`
	Primary  string `json:"primary"`
	Previous string `json:"previous,omitempty"`
}

func (a *app) keysetCommand() *cobra.Command {
	list := &cobra.Command{
		Use:   "list",
		Short: "List the DEKs of the configured keyset",
		Long: `List the DEKs of the configured keyset: id, state (primary, decrypt-only,
retired), creation time, and the KEK wraps of each (provider:key-id@version).
No key is used.`,
		Args: cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			ks, path, err := a.loadKeyset()
			if err != nil {
				return err
			}
			res := keysetListResult{File: path, DEKs: []keysetDEK{}}
			for _, e := range ks.DEKs {
				res.DEKs = append(res.DEKs, keysetDEK{
					ID: fmt.Sprintf("%08x", e.ID), State: string(e.State),
					Created: e.Created.UTC().Format(time.RFC3339), Wraps: wrapInfos(e.Wrapped),
				})
			}
			if a.jsonOut {
				a.emitJSON(res)
				return nil
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "ID\tSTATE\tCREATED\tWRAPS\n")
			for _, d := range res.DEKs {
				ws := make([]string, len(d.Wraps))
				for i, w := range d.Wraps {
					ws[i] = oneLine(fmt.Sprintf("%s:%s@%s", w.Provider, w.KeyID, w.KeyVersion))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.ID, d.State, d.Created, strings.Join(ws, ","))
			}
			return tw.Flush()
		}),
	}
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Add a new primary DEK; the old primary becomes decrypt-only",
		Long: `Generate a new DEK, wrap it under the keyring primary and make it the keyset's
primary: 'keyctl encrypt' uses it from now on. The previous primary becomes
decrypt-only, so values encrypted under it still decrypt. Re-encrypting those
values is a separate step.`,
		Args: cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			ring, err := a.keyring()
			if err != nil {
				return err
			}
			cfg, err := a.config()
			if err != nil {
				return err
			}
			var prev string
			var id uint32
			// A SQL keyset is created by its first rotation; a keyset file
			// by keyctl init.
			path, err := a.updateKeyset(cfg.Keyset.Kind() != "file", func(ks *core.Keyset) error {
				prev = ""
				if p, err := ks.Primary(); err == nil {
					prev = fmt.Sprintf("%08x", p.ID)
				}
				var err error
				id, err = ks.AddDEK(a.ctx, ring, time.Now())
				return err
			})
			if err != nil {
				return err
			}
			res := keysetRotateResult{File: path, Primary: fmt.Sprintf("%08x", id), Previous: prev}
			if a.jsonOut {
				a.emitJSON(res)
				return nil
			}
			if prev != "" {
				a.printf("new primary DEK %s; DEK %s is now decrypt-only\n", res.Primary, prev)
			} else {
				a.printf("new primary DEK %s\n", res.Primary)
			}
			return nil
		}),
	}
	return group("keyset", "List and rotate the DEKs of the configured keyset",
		`The keyset is the list of DEKs used by 'keyctl encrypt' and 'keyctl decrypt',
stored wrapped in the store named by the keyset block of keyctl.hcl: a JSON
file, a SQLite database or a PostgreSQL database.`,
		list, rotate)
}

// fieldCipher opens the configured keyset with the keyring.
func (a *app) fieldCipher() (*core.FieldCipher, error) {
	ks, _, err := a.loadKeyset()
	if err != nil {
		return nil, err
	}
	ring, err := a.keyring()
	if err != nil {
		return nil, err
	}
	return ks.OpenFieldCipher(a.ctx, ring)
}
