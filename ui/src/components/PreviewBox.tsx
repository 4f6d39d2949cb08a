import { useEffect, useRef, type ReactNode } from "react";

/**
 * A preview of what a fix or request will run, shown in place of (or under) the button that opened it.
 * It takes the focus when it opens, so a keyboard user lands in what they asked to see instead of on
 * the page (the "Fix…" button that had the focus is gone), and Escape closes it; the opener puts the
 * focus back on its button.
 */
export function PreviewBox({
  label,
  onClose,
  testId,
  className,
  children,
}: {
  /** What is previewed, for screen readers ("Fix: the publication"). */
  label: string;
  /** Closes the preview (Escape). */
  onClose: () => void;
  testId?: string;
  className?: string;
  children: ReactNode;
}) {
  const box = useRef<HTMLDivElement>(null);
  useEffect(() => {
    box.current?.focus();
  }, []);
  return (
    <div
      ref={box}
      tabIndex={-1}
      role="group"
      aria-label={label}
      className={className}
      data-testid={testId}
      onKeyDown={(event) => {
        if (event.key !== "Escape") return;
        // An open dialog or another preview around this one keeps its own Escape.
        event.stopPropagation();
        onClose();
      }}
    >
      {children}
    </div>
  );
}
