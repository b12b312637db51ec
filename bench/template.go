package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/paddock-vm/paddock/api"
)

// templateRuns measures, through the CLI in the same run as the cold
// starts, what a template saves: `paddock run --from-template` until a
// first exec has answered, against the cold run -> exec median (cold).
func templateRuns(cli func(args ...string) (time.Duration, []byte, error), inspect func(name string) (string, *api.BootReport, error), n int, cold time.Duration) error {
	create, _, err := cli("template", "create", "tb", "--image", "minbase:start")
	if err != nil {
		return err
	}
	var runs, execs []time.Duration
	var reports []api.BootReport
	for i := range n {
		name := fmt.Sprintf("t%d", i)
		run, _, err := cli("run", "--from-template", "tb", "--name", name)
		if err != nil {
			return err
		}
		ex, _, err := cli("exec", name, "--", "true")
		if err != nil {
			return err
		}
		runs = append(runs, run+ex)
		_, r, err := inspect(name)
		if err != nil {
			return err
		}
		reports = append(reports, *r)
		execs = append(execs, ex)
		if _, _, err := cli("rm", "-f", name); err != nil {
			return err
		}
	}
	if _, _, err := cli("template", "rm", "tb"); err != nil {
		return err
	}
	m := medianDur(runs)
	fmt.Printf("paddock template create (boot, save, freeze)      %v\n", create.Round(time.Millisecond))
	fmt.Printf("paddock run --from-template -> first exec         %v  = %.2fx the cold run -> exec (goal <= 0.6 s and <= 0.25x)\n",
		m.Round(time.Millisecond), ratio(m, cold))
	// the median run's steps: where a resume spends its time
	i := slices.Index(runs, m)
	fmt.Printf("  its steps (daemon's clock, ms; vmm = QEMU started on the saved state, agent = resumed -> hello, identity = its identity step, first_exec = the CLI's exec):")
	for _, p := range reports[i].Steps {
		fmt.Printf(" %s %.0f ms,", p.Name, p.MS)
	}
	fmt.Printf(" first_exec %.0f ms\n  the guest's identity step (ms):", float64(execs[i].Microseconds())/1000)
	for _, p := range reports[i].Guest {
		fmt.Printf(" %s %.0f ms,", p.Name, p.MS)
	}
	fmt.Println()
	return nil
}

func medianDur(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	slices.Sort(s)
	return s[len(s)/2]
}
