// A Benthos 4.27.0 binary with only the components the benchmark needs (issue 8):
// the kafka_franz input, the sql_insert output with the PostgreSQL driver, and the
// mongodb output. Built by bench/peers/benthos.py into the project cache; nothing of
// Benthos is vendored here, only this list of imports.
package main

import (
	"context"

	"github.com/benthosdev/benthos/v4/public/service"

	// kafka and kafka_franz inputs/outputs.
	_ "github.com/benthosdev/benthos/v4/public/components/kafka"
	// mongodb output.
	_ "github.com/benthosdev/benthos/v4/public/components/mongodb"
	// Core processors, the "none" metrics exporter and tracer.
	_ "github.com/benthosdev/benthos/v4/public/components/pure"
	// sql_insert etc. without drivers, plus only the PostgreSQL driver.
	_ "github.com/benthosdev/benthos/v4/public/components/sql/base"
	_ "github.com/lib/pq"
)

func main() {
	service.RunCLI(context.Background())
}
