package main

import (
	"fmt"
	"slices"
	"time"
)

// templateRuns measures, through the CLI in the same run as the cold
// starts, what a template saves: `paddock run --from-template` until a
// first exec has answered, against the cold run -> exec median (cold).
func templateRuns(cli func(args ...string) (time.Duration, []byte, error), n int, cold time.Duration) error {
	create, _, err := cli("template", "create", "tb", "--image", "minbase:start")
	if err != nil {
		return err
	}
	var runs []time.Duration
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
	return nil
}

func medianDur(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	slices.Sort(s)
	return s[len(s)/2]
}
