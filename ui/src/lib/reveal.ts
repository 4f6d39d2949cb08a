// Feedback where the eye is: a result, error or document that appears because of a click is scrolled
// into view, so it never lands below the fold where the click seems to have done nothing.

/**
 * A ref callback: scrolls the element into view when it mounts, by as little as needed (`nearest`),
 * so what is already visible does not jump.
 */
export function scrollIntoView(element: Element | null) {
  // jsdom (the component tests) has no layout and no scrollIntoView.
  element?.scrollIntoView?.({ block: "nearest" });
}
