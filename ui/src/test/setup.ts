// Testing Library waits 1 s for a `findBy…` by default; on a 2-core machine shared with a Rust build
// a render can take longer (one ConsumersPanel test timed out so). What appears is what is asserted,
// not how soon: an element that never appears still fails, after 5 s.
import { configure } from "@testing-library/react";

configure({ asyncUtilTimeout: 5_000 });
